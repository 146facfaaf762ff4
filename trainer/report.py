"""`python -m trainer.report RUN_DIR`: the final zero-shot table of a run, from its metrics.jsonl.

Prints, per test set, top-1/top-5 among the set's own classes (standard zero-shot, as the paper
evaluates), the generalized accuracy where configured (nearest among test AND training classes),
and chance level for each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.runlog import read_jsonl


def final_rows(run_dir: Path) -> list[dict]:
    """The rows of the last evaluation of each test set (highest epoch, then most clips)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: has the run evaluated yet?")
    rows = read_jsonl(path)  # a torn last line (a kill mid-write) is skipped with a warning
    last: dict[str, tuple] = {}
    for r in rows:
        key = (r["epoch"], r["clips"])
        if r["dataset"] not in last or key >= last[r["dataset"]]:
            last[r["dataset"]] = key
    return [r for r in rows if (r["epoch"], r["clips"]) == last[r["dataset"]]]


def format_table(rows: list[dict]) -> str:
    lines = [f"{'test set':<14}{'protocol':<18}{'classes':>8}{'videos':>8}{'top-1':>12}{'chance':>8}"
             f"{'x chance':>9}{'top-5':>8}{'chance':>8}",
             "-" * 93]
    for r in rows:
        c = r["n_classes"] if r["protocol"] != "half_classes_x10" else r["n_classes"] // 2
        chance1, chance5 = 100.0 / c, 100.0 * min(5, c) / c
        top1 = f"{r['top1']:.1f}" + (f"±{r['top1_std']:.1f}" if "top1_std" in r else "")
        lines.append(f"{r['dataset']:<14}{r['protocol']:<18}{c:>8}{r['n_videos']:>8}{top1:>12}{chance1:>8.1f}"
                     f"{r['top1'] / chance1:>9.1f}{r['top5']:>8.1f}{chance5:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.report", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    args = p.parse_args(argv)
    try:
        rows = final_rows(args.run_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    epoch = max(r["epoch"] for r in rows)
    print(f"zero-shot results of {args.run_dir} (epoch {epoch}, {rows[0]['clips']} clips per video):")
    print(format_table(rows))
    print("all_classes: nearest among the test set's classes (the paper's protocol 2); half_classes_x10: "
          "mean±std over 10 random halves (protocol 1); generalized: nearest among all classes of the run "
          "(seen and unseen).")
    print(f"TensorBoard: tensorboard --logdir {args.run_dir / 'tb'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
