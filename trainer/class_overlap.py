"""Which training classes are too close to a test class to be trained on (the paper's overlap filter).

    python -m trainer.class_overlap --train kinetics700 --test ucf101 hmdb51 \\
        --vectors GoogleNews-vectors-negative300.bin --tau 0.05 --out excluded.txt
    python -m trainer.class_overlap --train kinetics700 --test ucf101 hmdb51 --sentence-model MODEL_DIR

A train class is excluded when the cosine distance (1 - cosine similarity) between its embedding and
the nearest test class's embedding is below tau. The output file is the exclude list that
`python -m sharding.build --exclude-classes FILE` reads (one raw class name per line, '#' comments).
The paper's own result at tau 0.05 ships as `sharding/data/excluded_kinetics700_paper.txt` (36 classes,
664 kept); this tool recomputes such a list for other vectors, renames or test sets.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sharding.class_names import load_class_list
from trainer.embed_classes import add_vectors_args, encoder_args, load_classes, show_progress
from trainer.embeddings import class_embeddings, load_class_texts, vectors_fingerprint


@dataclass(frozen=True)
class Overlap:
    """A train class and its nearest test class.

    Attributes:
        train: the train class's raw name.
        test: the nearest test class's raw name.
        test_source: where the test class came from (`ucf101`, a manifest path, ...).
        distance: their cosine distance, 1 - cos.
    """

    train: str
    test: str
    test_source: str
    distance: float


def nearest_test_classes(train_emb: np.ndarray, test_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each train embedding, the nearest test embedding by cosine distance.

    Args:
        train_emb: (N, D) unit rows.
        test_emb: (M, D) unit rows.

    Returns:
        `(index, distance)`: (N,) int index into the test rows and (N,) float cosine distance.
    """
    # Clipped: rounding makes identical unit vectors come out a hair below 0.
    dist = np.clip(1.0 - train_emb.astype(np.float64) @ test_emb.astype(np.float64).T, 0.0, 2.0)  # (N, M)
    index = dist.argmin(axis=1)  # (N,)
    return index, dist[np.arange(len(dist)), index]


def find_overlaps(train_names: list[str], train_emb: np.ndarray, test_names: list[str],
                  test_sources: list[str], test_emb: np.ndarray, tau: float) -> list[Overlap]:
    """Train classes whose nearest test class is closer than tau, nearest first.

    Args:
        train_names: raw train class names, row order of `train_emb`.
        train_emb: (N, D) unit rows.
        test_names: raw test class names, row order of `test_emb`.
        test_sources: the source of each test class.
        test_emb: (M, D) unit rows.
        tau: the cosine-distance threshold (the paper: 0.05); equality is not an overlap.

    Returns:
        The overlaps sorted by distance (ties: train order).
    """
    index, dist = nearest_test_classes(train_emb, test_emb)
    found = [Overlap(train_names[i], test_names[index[i]], test_sources[index[i]], float(dist[i]))
             for i in range(len(train_names)) if dist[i] < tau]
    return sorted(found, key=lambda o: o.distance)


def write_exclude_list(path: str | Path, names: list[str], header: list[str]) -> None:
    """Write an exclude list: '#' header lines, then one raw class name per line.

    Args:
        path: the file to write.
        names: raw class names.
        header: comment lines (without '#').
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {h}" for h in header] + names
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m trainer.class_overlap", description=__doc__.split("\n")[0])
    add_vectors_args(parser)
    parser.add_argument("--train", required=True,
                        help="the train classes: a manifest, a class-list file or kinetics700")
    parser.add_argument("--test", required=True, nargs="+",
                        help="the test classes: manifests, class-list files or ucf101 / hmdb51")
    parser.add_argument("--tau", type=float, default=0.05, help="cosine-distance threshold (paper: 0.05)")
    parser.add_argument("--out", help="write the exclude list here (for sharding.build --exclude-classes)")
    parser.add_argument("--class-texts", help="a YAML/JSON map class -> text(s) to embed instead of the names "
                                              "(embeddings.class_texts)")
    args = parser.parse_args(argv)
    show_progress()
    try:
        run(args, argv)
    except (FileNotFoundError, ValueError) as e:  # MissingWordsError is a ValueError
        sys.exit(f"error: {e}")


def run(args: argparse.Namespace, argv: list[str] | None) -> None:
    """The command's work, on parsed arguments."""
    train = load_classes(args.train)
    tests = [load_classes(spec) for spec in args.test]
    test_names = [n for t in tests for n in t.names]
    test_sources = [t.source for t in tests for _ in t.names]
    test_texts = [x for t in tests for x in t.texts]

    path, kind, options = encoder_args(args)
    mapping = load_class_texts(args.class_texts) if args.class_texts else None
    # One call for both sides: a word2vec vocabulary gap is reported once, with every missing word.
    emb = class_embeddings(train.texts + test_texts, path, None, fmt=args.format, kind=kind,
                           class_texts=mapping, trusted=args.trusted, **options)
    train_emb, test_emb = emb[:len(train.texts)], emb[len(train.texts):]

    overlaps = find_overlaps(train.names, train_emb, test_names, test_sources, test_emb, args.tau)
    width = max([len(o.train) for o in overlaps], default=0)
    print(f"{'distance':>8}  {'train class':<{width}}  nearest test class")
    for o in overlaps:
        print(f"{o.distance:8.4f}  {o.train:<{width}}  {o.test} ({o.test_source})")
    kept = len(train.names) - len(overlaps)
    print(f"{len(overlaps)} of {len(train.names)} train classes are within cosine distance {args.tau} of a "
          f"test class; {kept} remain")

    if set(train.names) <= set(load_class_list("kinetics700")):
        # Kinetics-700 train classes: say how this list differs from the paper's (Fig. 3).
        paper = set(load_class_list("excluded_kinetics700_paper")) & set(train.names)
        ours = {o.train for o in overlaps}
        print(f"vs the paper's list: also excluded here: {sorted(ours - paper) or 'none'}; "
              f"kept here but excluded by the paper: {sorted(paper - ours) or 'none'}")

    if args.out:
        fp = vectors_fingerprint(path)
        excluded = {o.train for o in overlaps}
        write_exclude_list(args.out, [n for n in train.names if n in excluded], [
            f"Train classes within cosine distance {args.tau} of a test class ({len(excluded)} of "
            f"{len(train.names)}; {kept} remain).",
            f"Written by: python -m trainer.class_overlap {shlex.join(sys.argv[1:] if argv is None else argv)}",
            f"Train: {train.source}; test: {', '.join(t.source for t in tests)}",
            f"Encoder: {kind} {fp['name']} ({fp['size']} bytes, sha256 of ends {fp['sha256'][:16]}); "
            f"options: {options}" + (f"; class texts: {args.class_texts}" if args.class_texts else ""),
            "Format: one raw class name per line; '#' lines and blank lines are ignored.",
        ])
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
