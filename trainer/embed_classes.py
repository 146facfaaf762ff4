"""Embed the class names of manifests or shipped class lists into one `.npz`.

    python -m trainer.embed_classes --vectors cc.en.300.bin \\
        --manifest shards/kinetics/_info.json --manifest shards/ucf101/_info.json --out classes.npz
    python -m trainer.embed_classes --vectors GoogleNews-vectors-negative300.bin --dataset ucf101 --out ucf.npz
    python -m trainer.embed_classes --sentence-model MODEL_DIR --lemmatize-verbs --dataset ucf101 --out ucf.npz

The output holds `classes` (raw names), `texts` (what was embedded), `embeddings` (float32, unit rows),
`sources` (the manifest or list each class came from) and the vectors' identity, in the format of
`trainer.embeddings.class_embeddings`'s cache, so the trainer can use it as its cache (if the trainer
adds texts to it, it rewrites the file without `classes` and `sources`).

A class source (`--manifest`, `--list`, and `class_overlap`'s `--train`/`--test`) is resolved by
`load_classes`: a manifest (`_info.json` or the folder holding it), a class-list file, or the name of a
shipped list (`ucf101`, `hmdb51`, `kinetics700`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sharding.class_names import DATASETS, class_text, dataset_key, load_class_list, read_class_list
from trainer.embeddings import encode_texts, load_encoder, vectors_fingerprint, write_embeddings_file


@dataclass(frozen=True)
class ClassSource:
    """Classes from one manifest or list, in label order.

    Attributes:
        source: where they came from (a path or a shipped list's name).
        names: raw class names.
        texts: the texts to embed, `texts[i]` for `names[i]`.
    """

    source: str
    names: list[str]
    texts: list[str]


def load_classes(spec: str) -> ClassSource:
    """Resolve a class source: a manifest, a class-list file or a shipped list's name.

    - `DIR/_info.json` or `DIR` (holding `_info.json`): the manifest's classes in label order, with
      the texts stored in it (what the trainer embeds).
    - a class-list file (`sharding.class_names.read_class_list` format): texts by `class_text`, with
      the rename table of the dataset the file's name starts with (`ucf101_classInd.txt` -> ucf101),
      none for other names.
    - `ucf101`, `hmdb51`, `kinetics700`: the shipped list, with that dataset's renames.

    Args:
        spec: the path or name.

    Returns:
        The classes.

    Raises:
        FileNotFoundError: the spec is neither an existing path nor a shipped list's name.
    """
    path = Path(spec)
    if path.is_dir():
        path = path / "_info.json"
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"manifest {path} not found: build the shards first (python -m "
                                    "sharding.build) or pass a class list / shipped dataset name")
        info = json.loads(path.read_text(encoding="utf-8"))
        classes = sorted(info["classes"], key=lambda c: c["label"])
        return ClassSource(str(path), [c["name"] for c in classes], [c["text"] for c in classes])
    if path.is_file():
        dataset = dataset_key(path.stem)
        names = read_class_list(path)
        return ClassSource(str(path), names, [class_text(n, dataset) for n in names])
    if spec in DATASETS:
        names = load_class_list(spec)
        return ClassSource(spec, names, [class_text(n, spec) for n in names])
    raise FileNotFoundError(f"class source {spec!r} is not a manifest (_info.json or its folder), a "
                            f"class-list file, or a shipped list ({', '.join(DATASETS)})")


def add_vectors_args(parser: argparse.ArgumentParser) -> None:
    """Add the text-encoder options shared by the class-embedding CLIs (`encoder_args` reads them)."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--vectors",
                       help="fastText .bin, word2vec .bin/.bin.gz or .vec/.txt, or gensim KeyedVectors")
    which.add_argument("--sentence-model",
                       help="a local sentence-transformers model folder instead of word vectors "
                            "(embeddings.kind sentence_transformer; pip install -e '.[text]')")
    parser.add_argument("--lemmatize-verbs", action="store_true",
                        help="verbs in their base form before embedding ('playing' -> 'play'), as the paper's code")
    parser.add_argument("--format", default="auto",
                        choices=["auto", "fasttext", "word2vec-bin", "word2vec-text", "gensim"],
                        help="the vectors file's format (auto: sniffed from its first bytes; never gensim)")
    parser.add_argument("--trusted", action="store_true",
                        help="allow a pickle-based vectors file (--format gensim, gensim KeyedVectors.save): "
                             "loading one runs code stored in it, so only for a file you trust "
                             "(the config's embeddings.trusted)")
    parser.add_argument("--raw-word-vectors", action="store_true",
                        help="average the raw word vectors instead of unit ones (the paper uses unit ones)")
    parser.add_argument("--keep-stop-words", action="store_true",
                        help="keep 'a', 'the', 'of', ... (the paper drops them)")


def encoder_args(args: argparse.Namespace) -> tuple[str, str, dict]:
    """(encoder path, kind, `encode_texts` options) of the options `add_vectors_args` added."""
    kind = "sentence_transformer" if args.sentence_model else "word_vectors"
    options = dict(normalize_words=not args.raw_word_vectors, drop_stop_words=not args.keep_stop_words,
                   lemmatize_verbs=args.lemmatize_verbs)
    return args.sentence_model or args.vectors, kind, options


def show_progress() -> None:
    """Print this project's progress messages (loading, stale caches), not gensim's INFO chatter."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("trainer").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m trainer.embed_classes", description=__doc__.split("\n")[0])
    add_vectors_args(parser)
    parser.add_argument("--manifest", action="append", default=[], help="a shard manifest (_info.json); repeatable")
    parser.add_argument("--dataset", action="append", default=[], choices=list(DATASETS),
                        help="a shipped class list; repeatable")
    parser.add_argument("--list", action="append", default=[], help="a class-list file; repeatable")
    parser.add_argument("--out", required=True, help="the .npz to write")
    args = parser.parse_args(argv)
    specs = args.manifest + args.dataset + args.list
    if not specs:
        parser.error("give at least one --manifest, --dataset or --list")
    show_progress()
    try:
        run(args, specs)
    except (FileNotFoundError, ValueError) as e:  # MissingWordsError is a ValueError
        sys.exit(f"error: {e}")


def run(args: argparse.Namespace, specs: list[str]) -> None:
    """The command's work, on parsed arguments."""
    names: list[str] = []
    texts: list[str] = []
    sources: list[str] = []
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        classes = load_classes(spec)
        for name, text in zip(classes.names, classes.texts):
            # Train and eval manifests of one dataset list the same classes: keep each once.
            if (name, text) not in seen:
                seen.add((name, text))
                names.append(name)
                texts.append(text)
                sources.append(classes.source)
        print(f"{classes.source}: {len(classes.names)} classes")

    path, kind, options = encoder_args(args)
    encoder = load_encoder(path, kind, args.format, args.trusted)
    embeddings = encode_texts(encoder, texts, **options)
    write_embeddings_file(args.out, texts, embeddings, vectors_fingerprint(path), kind=kind, **options,
                          classes=np.array(names, dtype=str), sources=np.array(sources, dtype=str))
    print(f"wrote {len(names)} class embeddings of dimension {encoder.dim} to {args.out}")


if __name__ == "__main__":
    main()
