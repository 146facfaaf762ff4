"""Zero-shot evaluation: nearest class embedding, the paper's two protocols, and the CLI.

    python -m trainer.evaluate configs/author.yaml checkpoint=runs/author/checkpoints/ckpt_0100000.pt
    python -m trainer.evaluate configs/author.yaml            # the newest checkpoint in run.out_dir
    torchrun --nproc_per_node=4 -m trainer.evaluate CONFIG checkpoint=PATH [key=value ...]

The test sets are built here for both the trainer's evaluations and this command
(`make_test_loaders`, `build_test_sets`); `trainer/main.py --eval-only` is this command.

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

from dali_pipelines.loader import make_eval_loader
from sharding.reader import ShardError, load_shards
from trainer.checkpoint import list_checkpoints, load_checkpoint, resume_point
from trainer.config import ConfigError, TrainConfig, load_config
from trainer.distributed import (all_gather_objects, broadcast_object, device_name, dist_env, init_process_group,
                                 pick_device, print0)
from trainer.embeddings import embeddings_for
from trainer.faults import Signals, TrainingError, inject, run_cli
from trainer.model import autocast_dtype, build_model
from trainer.staging import local_config


def topk_accuracy(pred: np.ndarray, labels: np.ndarray, class_emb: np.ndarray, ks=(1, 5)) -> dict[str, float]:
    """Accuracy (in %) of nearest-class-embedding prediction by cosine similarity.

    Args:
        pred: (V, D) predicted embeddings (unit norm or not: rows are normalised here).
        labels: (V,) index of each video's true class in `class_emb`.
        class_emb: (C, D) class embeddings.

    Ties count against the prediction: a video's rank is the number of *other* classes scoring at
    least as high as its true class, so a model that scores every class alike (a zero output, a
    dead head) ranks every video last, never first.

    Example: two classes at (1, 0) and (0, 1); predictions (0.9, 0.1) labelled 0 and (0.8, 0.2)
    labelled 1 -> top-1 50%, top-5 100% (k is capped at C); a prediction (1, 1) is tied between
    the two and counts as a top-1 miss for either label.

    Raises:
        ValueError: a prediction that is not finite (NaN weights would otherwise tie every class).
    """
    if not np.isfinite(pred).all():
        raise ValueError(f"{int((~np.isfinite(pred).all(1)).sum())} of {len(pred)} predicted embeddings are "
                         "not finite")
    p = _unit_rows(pred)
    c = _unit_rows(class_emb)
    sim = p @ c.T  # (V, C)
    true = sim[np.arange(len(labels)), labels]
    rank = (sim >= true[:, None]).sum(1) - 1  # the true class itself is always >= itself
    return {f"top{k}": float(100.0 * np.mean(rank < min(k, c.shape[0]))) for k in ks}


def _unit_rows(x: np.ndarray) -> np.ndarray:
    # a zero row stays zero (cosine 0 with every class: all tied) instead of becoming 0/0 = NaN
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


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


def evaluate_set(model, ts: TestSet, clips: int, device, amp_dtype=None,
                 source: str = "the model") -> tuple[list[dict], dict]:
    """Run one test set; returns (metric rows, arrays for the npz).

    Raises:
        TrainingError: a predicted embedding is not finite, naming the set and `source` (the
            checkpoint or training step the weights come from).
    """
    pred, labels, videos = predict(model, ts.loaders[clips], device, amp_dtype)
    bad = ~np.isfinite(pred).all(1)
    if bad.any():
        raise TrainingError(f"test set '{ts.name}': {int(bad.sum())} of {len(pred)} predicted embeddings are not "
                            f"finite (NaN/inf) with {source}: its weights are broken; no accuracy is reported. "
                            "Evaluate an earlier checkpoint (checkpoint=PATH).")
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

    sim = _unit_rows(arrays["pred"]) @ _unit_rows(arrays["class_emb"]).T  # (V, C)
    true = sim[np.arange(len(sim)), arrays["labels"]]
    hit = (sim >= true[:, None]).sum(1) == 1  # topk_accuracy's tie rule: a tie is a miss
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


# ---------------------------------------------------------------------------------------- test sets

def make_test_loaders(cfg: TrainConfig, clip_counts: list[int], rank: int, world_size: int, local_rank: int,
                      device: str) -> list[dict]:
    """One {clips per video: EvalLoader} per `eval.sets` entry (built before CUDA: loaders fork)."""
    return [{n: make_eval_loader(cfg.eval.data(ts, cfg.data.train, n), rank, world_size, local_rank, device)
             for n in clip_counts} for ts in cfg.eval.sets]


def eval_train_classes(train_shards: str, checkpoint: str | Path, ckpt: dict) -> list[dict]:
    """The training classes for an evaluation-only run: from the training shards' manifest when
    they are here, else from the checkpoint `ckpt` loaded from `checkpoint` (ours store them;
    `trainer.import_checkpoint` writes the paper's 664 Kinetics classes), so a checkpoint can be
    evaluated without its training data.

    Raises:
        TrainingError: neither source has them, naming both.
    """
    try:
        return load_shards(train_shards).info["classes"]
    except ShardError as e:
        reason = str(e)
    classes = ckpt.get("train_classes")
    if classes:
        print0(f"training classes: {len(classes)} from {checkpoint} (no training shards: {reason})")
        return classes
    raise TrainingError(f"evaluation needs the training classes (overlap check, generalized accuracy): "
                        f"the training shards cannot be read ({reason}) and the checkpoint "
                        f"{checkpoint} lists none; point data.train.shards at them, or re-import the "
                        "checkpoint with python -m trainer.import_checkpoint --train-classes FILE")


def check_no_overlap(train_classes: list[dict], test_name: str, test_classes: list[dict]) -> None:
    """A zero-shot test set must not contain training classes (by raw name or embedded text)."""
    train_keys = {c["name"].lower() for c in train_classes} | {c["text"] for c in train_classes}
    clash = [c["name"] for c in test_classes if c["name"].lower() in train_keys or c["text"] in train_keys]
    if clash:
        raise TrainingError(
            f"test set '{test_name}' shares {len(clash)} classes with the training set ({clash[:5]}"
            f"{' ...' if len(clash) > 5 else ''}): that is not zero-shot. Rebuild the training shards with "
            "--exclude-classes (python -m trainer.class_overlap makes the list), or mark the set `seen: true`.")


def embed_all(cfg: TrainConfig, texts: list[str], rank: int) -> np.ndarray:
    """Class embeddings of `texts`, computed on rank 0 (one read of the vectors file) and broadcast."""
    emb = None
    if rank == 0:
        cache = cfg.embeddings.cache or str(Path(cfg.run.out_dir) / "class_embeddings.npz")
        emb = embeddings_for(cfg.embeddings, texts, cache)  # either kind; the head's size follows its dim
    return broadcast_object(emb)


COINCIDE = 0.9999  # cosine above which two class embeddings count as the same point


def coinciding(emb_a: np.ndarray, emb_b: np.ndarray | None = None) -> list[tuple[int, int, float]]:
    """(i, j, cosine) of the class pairs whose embeddings coincide (cosine > COINCIDE): within `emb_a`
    (i < j), or between `emb_a` row i and `emb_b` row j."""
    a = _unit_rows(emb_a)
    sim = a @ (a if emb_b is None else _unit_rows(emb_b)).T
    if emb_b is None:
        sim = np.triu(sim, k=1) - np.tril(np.full_like(sim, 2.0))  # each pair once, never a class with itself
    return [(int(i), int(j), float(sim[i, j])) for i, j in zip(*np.nonzero(sim > COINCIDE))]


def check_embeddings(ts: TestSet, train_names: list[str], train_emb: np.ndarray) -> None:
    """Report the classes of `ts` that cannot be told apart (identical embeddings: the mean of word
    vectors ignores word order, so "climbing a rope" and "rope climbing" coincide), and refuse a
    zero-shot set with a class whose embedding coincides with a training class's.

    Raises:
        TrainingError: a class of an unseen test set coincides with a training class (leakage the
            name-based overlap check cannot see).
    """
    for i, j, cos in coinciding(ts.class_emb):
        print0(f"warning: test set '{ts.name}': classes '{ts.class_names[i]}' and '{ts.class_names[j]}' have "
               f"the same embedding (cosine {cos:.5f}): indistinguishable by construction, one of them is always "
               "ranked below the other")
    if ts.seen:
        return
    leak = [f"'{ts.class_names[i]}' ~ '{train_names[j]}' (cosine {cos:.5f})"
            for i, j, cos in coinciding(ts.class_emb, train_emb)]
    if leak:
        raise TrainingError(
            f"test set '{ts.name}' has {len(leak)} classes whose embedding coincides with a training class's: "
            f"{', '.join(leak[:5])}{' ...' if len(leak) > 5 else ''}. The model is trained on that very target, "
            "so this is not zero-shot. Rebuild the training shards with --exclude-classes, or mark the set "
            "`seen: true`.")


def build_test_sets(cfg: TrainConfig, train_classes: list[dict], test_loaders: list[dict],
                    rank: int) -> tuple[list[TestSet], np.ndarray]:
    """Check the zero-shot sets against the training classes, embed every class of the run once, and
    return (the test sets, the training classes' embeddings (C_train, D))."""
    test_classes = [next(iter(loaders.values())).classes for loaders in test_loaders]
    for ts, classes in zip(cfg.eval.sets, test_classes):
        if not ts.seen:
            check_no_overlap(train_classes, ts.name, classes)
    texts = [c["text"] for c in train_classes] + [c["text"] for cl in test_classes for c in cl]
    all_emb = embed_all(cfg, list(dict.fromkeys(texts)), rank)
    row = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    test_sets = []
    for ts, loaders, classes in zip(cfg.eval.sets, test_loaders, test_classes):
        own = {c["text"] for c in classes}
        # generalized: compete with every other class of the run (training and all test sets)
        extra = [i for t, i in row.items() if t not in own]
        test_sets.append(TestSet(ts.name, loaders, [c["name"] for c in classes], [c["text"] for c in classes],
                                 all_emb[[row[c["text"]] for c in classes]],
                                 all_emb[extra] if ts.generalized else None, ts.seen))
    train_emb = all_emb[[row[c["text"]] for c in train_classes]]
    for ts in test_sets:
        check_embeddings(ts, [c["name"] for c in train_classes], train_emb)
    return test_sets, train_emb


def evaluate_all(model, test_sets: list[TestSet], clips: int, device, amp_dtype, out_dir: Path, epoch: int,
                 step: int, writer=None, source: str = "the model") -> None:
    """Every test set at `clips` clips per video; rank 0 prints and writes the results. `source`
    names the weights in errors (a checkpoint, a training step)."""
    for ts in test_sets:
        rows, arrays = evaluate_set(model, ts, clips, device, amp_dtype, source)
        if dist_env()[0] == 0:
            write_results(out_dir, rows, arrays, ts.name, epoch, step, writer)
            for r in rows:
                print0(f"eval {ts.name:>12} {r['protocol']:>16} clips {clips:2d}: top1 {r['top1']:6.2f}  "
                       f"top5 {r['top5']:6.2f}  ({r['n_videos']} videos, {r['n_classes']} classes)")
        inject("eval", step)


# ---------------------------------------------------------------------------------------- the command

USAGE = "usage: python -m trainer.evaluate CONFIG [checkpoint=PATH] [key=value ...]"


def run_eval(config: str, overrides: list[str], checkpoint: str | None = None) -> int:
    """Evaluate `checkpoint` (default: the newest in run.out_dir) on every `eval.sets` entry with
    `eval.clips` clips per video; results go to run.out_dir (metrics.jsonl, eval/, tb/; never its
    config.yaml, which is the training run's). A signal stops it at once."""
    rank, local_rank, world_size = dist_env()
    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        print0(f"error: {e}")
        return 2
    out_dir = Path(cfg.run.out_dir)
    if checkpoint is None and not list_checkpoints(out_dir):
        print0(f"error: no checkpoint in {out_dir / 'checkpoints'} to evaluate; pass checkpoint=PATH "
               f"({USAGE.split(': ', 1)[1]})")
        return 2
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed + rank)
    np.random.seed(cfg.run.seed + rank)
    Signals().install()  # before the loaders fork; any signal interrupts at once
    dev_str = device_name(local_rank)  # counts GPUs through NVML: CUDA stays uninitialised for the fork
    local = local_config(cfg, local_rank, train=False)  # URL test sets: staged (trainer/staging.py)
    test_loaders = make_test_loaders(local, [cfg.eval.clips], rank, world_size, local_rank, dev_str)
    device = pick_device(local_rank)
    init_process_group(device, world_size)

    if checkpoint is not None:
        ckpt_path, ckpt = Path(checkpoint), load_checkpoint(checkpoint)
    else:  # the newest readable one, chosen by rank 0 for every rank
        ckpt_path, ckpt = resume_point(out_dir, rank)
        if ckpt is None:
            raise TrainingError(f"no checkpoint in {out_dir / 'checkpoints'} can be read; pass checkpoint=PATH")
    train_classes = eval_train_classes(cfg.data.train.shards, ckpt_path, ckpt)
    test_sets, train_emb = build_test_sets(cfg, train_classes, test_loaders, rank)
    model = build_model(cfg.model.backbone, train_emb.shape[1], cfg.model.dropout, cfg.model.widths,
                        cfg.model.layers).to(device)
    model.load_state_dict(ckpt["model"])
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    print0(f"loaded {ckpt_path} (step {ckpt['step']}, epoch {ckpt['epoch']})")
    writer = None
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"))
    evaluate_all(model, test_sets, cfg.eval.clips, device, autocast_dtype(cfg.optim.amp, device), out_dir,
                 ckpt["epoch"], ckpt["step"], writer, source=f"checkpoint {ckpt_path}")
    if writer is not None:
        writer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.evaluate CONFIG [checkpoint=PATH] [key=value ...]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ckpt = [a.split("=", 1)[1] for a in argv if a.startswith("checkpoint=")]
    rest = [a for a in argv if not a.startswith("checkpoint=")]
    if not rest or rest[0].startswith("-") or "=" in rest[0] or len(ckpt) > 1:
        print(USAGE, file=sys.stderr)
        return 2
    return run_cli(run_eval, rest[0], rest[1:], ckpt[0] if ckpt else None)


if __name__ == "__main__":
    sys.exit(main())
