"""Import the authors' released checkpoints (Brattoli et al.) as one of our checkpoints.

    python -m trainer.import_checkpoint checkpoint.pth.tar runs/authors/ckpt_authors.pt [--trusted]
    python -m trainer.evaluate configs/author.yaml checkpoint=runs/authors/ckpt_authors.pt

The released `checkpoint.pth.tar` = {'state_dict', 'opt', 'accuracy'}: keys prefixed `module.`
(DataParallel), the backbone as `module.model.<i>.` (an nn.Sequential of torchvision VideoResNet's
children without fc: 0 stem, 1..4 layer1..layer4, 5 avgpool), the head `module.regressor.weight`
[300, 512] and `.bias`; `opt` is a pickled argparse Namespace.

Loading: first with `weights_only=True` plus argparse.Namespace allowed (no code runs). A file that
needs more (other pickled classes) is refused unless `--trusted` is given, which unpickles it fully
(`weights_only=False`): pickle can run arbitrary code, so only for files you trust.

Every source tensor is either placed in our ZeroShotModel state_dict or listed with its shape as
not placed; nothing is dropped silently. A 2-D weight + bias pair that is neither backbone nor
regressor (e.g. a classifier [num_classes, 300] or [num_classes, 512]) is reported as an extra dense
layer; `--keep-extra-head` stores it in DST under `extra_heads` (our model does not use it).
DST holds only tensors and plain containers, so `trainer.checkpoint.load_checkpoint`
(weights_only=True) reads it.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import torch

from sharding.class_names import class_text, load_class_list, read_class_list
from trainer.model import BACKBONES, build_model

_BACKBONE_CHILDREN = {0: "stem", 1: "layer1", 2: "layer2", 3: "layer3", 4: "layer4"}  # 5 = avgpool, no tensors


def load_source(path: Path, trusted: bool) -> dict:
    """The released file as a dict; see the module docstring for the two loading modes."""
    import argparse as _argparse

    try:
        with torch.serialization.safe_globals([_argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the safe unpickler refused something
        if not trusted:
            raise SystemExit(f"error: {path} cannot be loaded safely (weights_only=True): {e}\n"
                             "If you trust this file, re-run with --trusted (full unpickling: it can run "
                             "code).") from None
    print(f"warning: loading {path} with weights_only=False (--trusted): only do this for files you trust",
          file=sys.stderr)
    return torch.load(path, map_location="cpu", weights_only=False)


def plain(value):
    """A value made of plain types only (for weights_only loading): others become their repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return plain(value.item())
        except Exception:
            pass
    return repr(value)


def map_key(key: str) -> str | None:
    """Our state_dict name of a source key (after the `module.` prefix is gone), or None.

    >>> map_key("model.1.0.conv1.0.0.weight"), map_key("regressor.bias"), map_key("fc.weight")
    ('backbone.layer1.0.conv1.0.0.weight', 'regressor.bias', None)
    """
    m = re.fullmatch(r"model\.(\d+)\.(.+)", key)
    if m and int(m.group(1)) in _BACKBONE_CHILDREN:
        return f"backbone.{_BACKBONE_CHILDREN[int(m.group(1))]}.{m.group(2)}"
    if key in ("regressor.weight", "regressor.bias"):
        return key
    return None


def infer_backbone(keys) -> str:
    """`r2plus1d_18` or `r2plus1d_10` from the blocks per layer found in the source keys."""
    blocks = []
    for i in range(1, 5):
        idx = {int(m.group(1)) for k in keys if (m := re.match(rf"model\.{i}\.(\d+)\.", k))}
        blocks.append(len(idx))
    for name, (_, layers) in BACKBONES.items():
        if tuple(blocks) == tuple(layers):
            return name
    raise SystemExit(f"error: the source backbone has {blocks} blocks per layer; known: "
                     f"{ {n: l for n, (_, l) in BACKBONES.items()} }")


def paper_train_classes(path: Path | None = None, dataset: str = "kinetics700") -> list[dict]:
    """The training classes stored in an imported checkpoint, as a shard manifest lists them
    ({label, name, text}, labels in sorted name order): the class names in `path` (one per line), or
    by default the paper's 664 = Kinetics-700 minus its 36 excluded classes."""
    if path is not None:
        names = read_class_list(path)
    else:
        excluded = set(load_class_list("excluded_kinetics700_paper"))
        names = [n for n in load_class_list("kinetics700") if n not in excluded]
    return [{"label": i, "name": n, "text": class_text(n, dataset)} for i, n in enumerate(sorted(set(names)))]


def import_checkpoint(src: Path, dst: Path, trusted: bool = False, keep_extra_head: bool = False,
                      out=None, train_classes: list[dict] | None = None) -> dict:
    """Convert `src` into our checkpoint `dst`; returns a report {placed, unplaced, extra_dense, filled}.
    The report is printed to `out` (default: stdout). `train_classes` (default: `paper_train_classes()`)
    go into the checkpoint, so `trainer.evaluate` runs without the training shards."""
    out = out if out is not None else sys.stdout
    obj = load_source(src, trusted)
    if isinstance(obj, dict) and "state_dict" in obj:
        state, opt, accuracy = obj["state_dict"], obj.get("opt"), obj.get("accuracy")
        other = sorted(k for k in obj if k not in ("state_dict", "opt", "accuracy"))
    else:
        state, opt, accuracy, other = obj, None, None, []
    src_state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}

    print(f"source: {src}", file=out)
    opt_dict = plain(vars(opt)) if opt is not None and hasattr(opt, "__dict__") else plain(opt)
    if opt_dict:
        print("opt (the authors' training options):", file=out)
        for k in sorted(opt_dict) if isinstance(opt_dict, dict) else []:
            print(f"  {k} = {opt_dict[k]!r}", file=out)
    print(f"accuracy: {plain(accuracy)!r}", file=out)
    if other:
        print(f"other top-level entries (not imported): {other}", file=out)

    backbone = infer_backbone(src_state)
    if "regressor.weight" not in src_state:
        raise SystemExit("error: no regressor.weight in the source: not a checkpoint of the authors' model")
    embed_dim = src_state["regressor.weight"].shape[0]
    model = build_model(backbone, embed_dim, 0.05)
    ours = model.state_dict()

    new_state, unplaced = {}, []
    for k, v in src_state.items():
        name = map_key(k)
        if name is not None and name in ours and tuple(ours[name].shape) == tuple(v.shape):
            new_state[name] = v.detach().clone()
        else:
            why = "no counterpart" if name is None or name not in ours else f"shape differs from {name} {tuple(ours[name].shape)}"
            unplaced.append((k, tuple(v.shape), why))
    # BatchNorm counters absent from files written by old torch versions: zero, as a fresh model has
    filled = [k for k in ours if k not in new_state and k.endswith("num_batches_tracked")]
    for k in filled:
        new_state[k] = torch.zeros_like(ours[k])
    missing = [k for k in ours if k not in new_state]
    if missing:
        raise SystemExit(f"error: {len(missing)} tensors of our model have no source tensor, e.g. {missing[:5]}; "
                         f"unplaced source keys: {[u[0] for u in unplaced][:10]}")
    model.load_state_dict(new_state, strict=True)

    # extra dense layers: a 2-D weight with a matching 1-D bias that was not placed
    unplaced_keys = {u[0]: u for u in unplaced}
    extra = {}
    for k, shape, _ in unplaced:
        if k.endswith(".weight") and len(shape) == 2 and (k[:-7] + ".bias") in unplaced_keys:
            extra[k[:-7]] = {"weight": src_state[k].detach().clone(), "bias": src_state[k[:-7] + ".bias"].detach().clone()}

    print(f"placed {len(src_state) - len(unplaced)} of {len(src_state)} source tensors into a {backbone} "
          f"ZeroShotModel (embed dim {embed_dim}); config: model.backbone={backbone}", file=out)
    if filled:
        print(f"filled {len(filled)} BatchNorm num_batches_tracked counters with 0 (absent in the source)", file=out)
    for k, shape, why in unplaced:
        print(f"NOT PLACED: {k} {list(shape)} ({why})", file=out)
    for name, t in extra.items():
        n_out, n_in = t["weight"].shape
        what = {300: "on the 300-d embedding", 512: "on the 512-d backbone features"}.get(n_in, f"on {n_in}-d inputs")
        print(f"extra dense layer: {name} = Linear({n_in} -> {n_out}) {what} (probably a {n_out}-class "
              f"classifier); {'kept in extra_heads' if keep_extra_head else 'not kept (--keep-extra-head keeps it)'}",
              file=out)

    ckpt = {"model": model.state_dict(), "step": 0, "epoch": 0,
            "train_classes": train_classes if train_classes is not None else paper_train_classes(),
            "imported_from": {"path": str(src), "sha256": hashlib.sha256(Path(src).read_bytes()).hexdigest(),
                              "opt": opt_dict, "accuracy": plain(accuracy),
                              "unplaced": [[k, list(s)] for k, s, _ in unplaced]}}
    if keep_extra_head and extra:
        ckpt["extra_heads"] = extra
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(dst)
    print(f"wrote {dst}; evaluate with: python -m trainer.evaluate CONFIG checkpoint={dst}", file=out)
    return {"placed": len(src_state) - len(unplaced), "unplaced": unplaced, "extra_dense": sorted(extra),
            "filled": filled}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer.import_checkpoint",
        description="Convert the authors' checkpoint.pth.tar into one of our checkpoints. Loads with "
                    "weights_only=True (argparse.Namespace allowed); --trusted falls back to full "
                    "unpickling (weights_only=False), which can run code: only for files you trust.")
    p.add_argument("src", type=Path, help="the authors' checkpoint.pth.tar")
    p.add_argument("dst", type=Path, help="our checkpoint to write (.pt)")
    p.add_argument("--trusted", action="store_true",
                   help="allow torch.load(weights_only=False) when the safe load fails (TRUSTED FILES ONLY)")
    p.add_argument("--train-classes", type=Path,
                   help="class names the checkpoint was trained on, one per line (default: the paper's "
                        "664 Kinetics-700 classes); stored for evaluation without the training shards")
    p.add_argument("--train-dataset", default="kinetics700",
                   help="dataset whose class-name rules turn --train-classes into embedded text")
    p.add_argument("--keep-extra-head", action="store_true",
                   help="store extra dense layers (e.g. a num_classes classifier) in DST['extra_heads']")
    args = p.parse_args(argv)
    if not args.src.is_file():
        print(f"error: {args.src} does not exist", file=sys.stderr)
        return 2
    if args.train_classes is not None and not args.train_classes.is_file():
        print(f"error: --train-classes {args.train_classes} does not exist", file=sys.stderr)
        return 2
    import_checkpoint(args.src, args.dst, args.trusted, args.keep_extra_head,
                      train_classes=paper_train_classes(args.train_classes, args.train_dataset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
