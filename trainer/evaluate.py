"""Zero-shot evaluation: nearest class embedding, the paper's two protocols, and the CLI.

    python -m trainer.evaluate configs/author.yaml checkpoint=runs/author/checkpoints/ckpt_0100000.pt

Protocol 2 (the paper's main table): top-1/top-5 over all classes of the test set.
Protocol 1: top-1 over 10 random halves of the classes (`np.random.seed(i)`,
`permutation(C)[:C // 2]` for i in 0..9), mean and std.
Generalized (optional per test set): nearest among the test AND training classes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.distributed import all_gather_objects


def topk_accuracy(pred: np.ndarray, labels: np.ndarray, class_emb: np.ndarray, ks=(1, 5)) -> dict[str, float]:
    """Accuracy (in %) of nearest-class-embedding prediction by cosine similarity.

    Args:
        pred: (V, D) predicted embeddings (unit norm or not: rows are normalised here).
        labels: (V,) index of each video's true class in `class_emb`.
        class_emb: (C, D) class embeddings.

    Example: two classes at (1, 0) and (0, 1); predictions (0.9, 0.1) labelled 0 and (0.8, 0.2)
    labelled 1 -> top-1 50%, top-5 100% (k is capped at C).
    """
    p = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    c = class_emb / np.linalg.norm(class_emb, axis=1, keepdims=True)
    sim = p @ c.T  # (V, C)
    # rank of the true class = number of classes scoring strictly higher
    true = sim[np.arange(len(labels)), labels]
    rank = (sim > true[:, None]).sum(1)
    return {f"top{k}": float(100.0 * np.mean(rank < min(k, c.shape[0]))) for k in ks}


def protocol1(pred: np.ndarray, labels: np.ndarray, class_emb: np.ndarray, splits: int = 10) -> dict[str, float]:
    """The paper's protocol 1: mean/std of top-1 over `splits` random 50% class subsets."""
    C = class_emb.shape[0]
    top1, top5 = [], []
    for i in range(splits):
        np.random.seed(i)
        subset = np.random.permutation(C)[: C // 2]
        remap = -np.ones(C, dtype=np.int64)
        remap[subset] = np.arange(len(subset))
        keep = remap[labels] >= 0
        acc = topk_accuracy(pred[keep], remap[labels[keep]], class_emb[subset])
        top1.append(acc["top1"])
        top5.append(acc["top5"])
    return {"top1": float(np.mean(top1)), "top1_std": float(np.std(top1)), "top5": float(np.mean(top5))}


@dataclass
class TestSet:
    """A test set at run time: its loaders (by clips per video) and class embeddings."""

    name: str
    loaders: dict  # num_clips -> EvalLoader
    class_names: list[str]
    class_texts: list[str]
    class_emb: np.ndarray  # (C, D)
    extra_emb: np.ndarray | None  # (C_train, D) for generalized zero-shot, else None
    seen: bool


@torch.no_grad()
def predict(model, loader, device, amp_dtype=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings of every video over all ranks: (pred (V, D), labels (V,), video index (V,)),
    sorted by video index, padding dropped. Every rank returns the same arrays."""
    model.eval()
    preds, labels, videos = [], [], []
    for batch in loader:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(batch["clips"])  # (B, N, C, T, H, W) -> (B, D)
        keep = batch["video"] >= 0
        preds.append(out.float()[keep].cpu().numpy())
        labels.append(batch["labels"][keep].cpu().numpy())
        videos.append(batch["video"][keep].cpu().numpy())
    parts = all_gather_objects((np.concatenate(preds), np.concatenate(labels), np.concatenate(videos)))
    pred = np.concatenate([p[0] for p in parts])
    lab = np.concatenate([p[1] for p in parts])
    vid = np.concatenate([p[2] for p in parts])
    order = np.argsort(vid, kind="stable")
    if len(np.unique(vid)) != len(vid):
        raise RuntimeError("evaluation saw a video twice across ranks: loader padding is broken")
    return pred[order], lab[order], vid[order]


def evaluate_set(model, ts: TestSet, clips: int, device, amp_dtype=None) -> tuple[list[dict], dict]:
    """Run one test set; returns (metric rows, arrays for the npz)."""
    pred, labels, videos = predict(model, ts.loaders[clips], device, amp_dtype)
    n_classes = len(ts.class_names)
    base = {"dataset": ts.name, "clips": clips, "n_videos": int(len(labels)), "n_classes": n_classes,
            "seen": ts.seen}
    rows = [{**base, "protocol": "all_classes", **topk_accuracy(pred, labels, ts.class_emb)}]
    if n_classes >= 4:
        rows.append({**base, "protocol": "half_classes_x10", **protocol1(pred, labels, ts.class_emb)})
    if ts.extra_emb is not None:
        both = np.concatenate([ts.class_emb, ts.extra_emb])
        rows.append({**base, "protocol": "generalized", "n_classes": len(both),
                     **topk_accuracy(pred, labels, both)})
    arrays = {"pred": pred.astype(np.float32), "labels": labels, "video": videos,
              "class_names": np.array(ts.class_names), "class_texts": np.array(ts.class_texts),
              "class_emb": ts.class_emb.astype(np.float32)}
    if ts.extra_emb is not None:
        arrays["extra_class_emb"] = ts.extra_emb.astype(np.float32)
    return rows, arrays


def per_class_figure(arrays: dict, title: str):
    """A bar chart of per-class top-1 accuracy (for TensorBoard)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = arrays["pred"] / np.linalg.norm(arrays["pred"], axis=1, keepdims=True)
    hit = (p @ arrays["class_emb"].T).argmax(1) == arrays["labels"]
    C = len(arrays["class_names"])
    acc = np.array([hit[arrays["labels"] == c].mean() * 100 if (arrays["labels"] == c).any() else 0 for c in range(C)])
    order = np.argsort(acc)
    fig, ax = plt.subplots(figsize=(8, max(3, 0.16 * C)))
    ax.barh(np.arange(C), acc[order])
    ax.set_yticks(np.arange(C), [str(arrays["class_names"][i]) for i in order], fontsize=6)
    ax.set_xlabel("top-1 %")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def write_results(run_dir: Path, rows: list[dict], arrays: dict, name: str, epoch: int, step: int,
                  writer=None) -> None:
    """metrics.jsonl lines, eval/<name>_e<epoch>.npz and TensorBoard (rank 0 only)."""
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    np.savez(run_dir / "eval" / f"{name}_e{epoch}.npz", **arrays)
    with open(run_dir / "metrics.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps({"epoch": epoch, "step": step, **r}) + "\n")
    if writer is not None:
        for r in rows:
            for k in ("top1", "top5"):
                writer.add_scalar(f"eval/{name}/{r['protocol']}/{k}", r[k], step)
        writer.add_figure(f"eval/{name}/per_class_top1", per_class_figure(arrays, f"{name} epoch {epoch}"), step)
        writer.flush()


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.evaluate CONFIG checkpoint=PATH [key=value ...]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ckpt = [a for a in argv if a.startswith("checkpoint=")]
    if len(argv) < 1 or len(ckpt) != 1:
        print("usage: python -m trainer.evaluate CONFIG checkpoint=PATH [key=value ...]", file=sys.stderr)
        return 2
    from trainer.main import main as trainer_main

    rest = [a for a in argv if not a.startswith("checkpoint=")]
    return trainer_main([*rest, "--eval-only", f"--checkpoint={ckpt[0].split('=', 1)[1]}"])


if __name__ == "__main__":
    sys.exit(main())
