"""A release file of a trained model: what `trainer.predict` needs, safe to share.

    python -m trainer.export runs/author model.pt                 # the run's newest checkpoint
    python -m trainer.export runs/author/checkpoints/ckpt_0050000.pt model.pt [--shards shards/ucf101]
    python -m trainer.export runs/authors/ckpt_authors.pt model.pt --config configs/author.yaml   # imported

The file is a plain dict of tensors, strings, numbers, lists and dicts (no optimizer state, no RNG
states, no pickled objects), so it loads with `torch.load(path, weights_only=True)`. Its keys
(README "Predicting"):

- `format` = "zsvideo-model", `format_version` = 1;
- `model`: the state_dict (tensors only);
- `model_config`: {backbone, widths, layers, dropout, embed_dim};
- `eval`: the run's evaluation settings as `dali_pipelines.config.EvalDataConfig` fields without
  `shards` (num_clips = the run's eval.clips, clip_len, stride, crop, resize_short,
  clip_positions, standardization, seed, batch_size, num_threads, prefetch, py_workers, device);
- `build`: the builder settings of the run's eval shards (short_side, fps, codec, container, crf,
  speed, gop, clip_span, strict_frame_count) and `source`, the manifest they were read from:
  predict decodes and re-encodes each video with them, as `sharding.build` did;
- `embeddings`: the run's `embeddings` section (kind, vectors or model, normalize_words,
  lemmatize_verbs, class_texts, cache) plus `fingerprint` (name, size, sha256 of the vectors file
  or model folder: `trainer.embeddings.vectors_fingerprint`), so predict can tell when the text
  encoder at that path is not the one the model was trained against, and `class_texts_map` (the
  class_texts file's map: class text -> texts) when the run has one;
- `amp`: the run's autocast setting on CUDA ("bf16" or "none");
- `train_classes`: [{label, name, text}] the model was trained on;
- `source`: {checkpoint (its file name), step, epoch}.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from pydantic import ValidationError

from trainer.checkpoint import latest_checkpoint, load_checkpoint
from trainer.config import ConfigError, TestSetConfig, TrainConfig, load_config
from trainer.embeddings import load_class_texts, vectors_fingerprint

FORMAT = "zsvideo-model"
FORMAT_VERSION = 1
# The manifest's `encoding` fields predict needs to redo the builder's decode and encode.
BUILD_KEYS = ("short_side", "fps", "codec", "container", "crf", "speed", "gop", "clip_span")


class ExportError(ValueError):
    """A checkpoint or release file that cannot be used; the message says what to do."""


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's newest checkpoint.

    Raises:
        ExportError: the path does not exist, or a folder has no checkpoints.
    """
    path = Path(path)
    if path.is_dir():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise ExportError(f"{path} is a folder without checkpoints/ckpt_*.pt: pass a run folder "
                              "that has trained, or a checkpoint file")
        return ckpt
    if not path.is_file():
        raise ExportError(f"{path} does not exist: pass a run folder, a checkpoint or a release file")
    return path


def build_settings(cfg: TrainConfig, shards: str | Path | None = None) -> dict:
    """The builder settings of the run's eval shards (their manifest's `encoding`).

    Args:
        cfg: the run's config.
        shards: an eval shard set (folder or `_info.json`) to read them from instead of the run's
            eval sets (when those are not on this machine).

    Returns:
        {short_side, fps, codec, container, crf, speed, gop, clip_span, strict_frame_count,
        jpeg_quality, source} (strict_frame_count from the build's `_build.json`; False, the
        builder's default, when absent; jpeg_quality None but for a `--codec jpeg` set).

    Raises:
        ExportError: no readable video eval manifest, or the run's eval sets disagree.
    """
    candidates = [str(shards)] if shards is not None else [ts.shards for ts in cfg.eval.sets]
    found, tried = [], []
    for c in candidates:
        path = Path(c)
        path = path / "_info.json" if path.is_dir() or path.suffix != ".json" else path
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            tried.append(f"{path} ({type(e).__name__})")
            continue
        enc = info.get("encoding", {})
        if enc.get("media") == "image" or info.get("split") != "eval" or any(k not in enc for k in BUILD_KEYS):
            tried.append(f"{path} (not a video eval shard set of this format)")
            continue
        try:
            strict = bool(json.loads((path.parent / "_build.json").read_text()).get("strict_frame_count", False))
        except (OSError, ValueError):
            strict = False
        found.append({**{k: enc[k] for k in BUILD_KEYS}, "strict_frame_count": strict,
                      "jpeg_quality": enc.get("quality"), "source": str(path)})  # quality: JPEG frames only
    if not found:
        raise ExportError("predict redoes the builder's decode with the eval shards' settings (short side, "
                          f"fps, codec, crf): none of {tried or 'the run (it has no eval sets)'} could be "
                          "read; pass --shards with an eval shard set built with the same settings")
    keys = (*BUILD_KEYS, "jpeg_quality")
    differ = [f for f in found[1:] if {k: f[k] for k in keys} != {k: found[0][k] for k in keys}]
    if differ:
        raise ExportError(f"the run's eval sets were built with different settings ({found[0]} vs "
                          f"{differ[0]}); pass --shards to choose the one predict should follow")
    return found[0]


def _run_config(raw: dict, where: Path) -> TrainConfig:
    """The checkpoint's resolved config, validated again."""
    raw = copy.deepcopy(raw)
    # A resolved config carries the derived per-rank batch size, which the validator refuses as input.
    raw.get("data", {}).get("train", {}).pop("batch_size", None)
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ExportError(f"{where}: its config does not validate with this code ({e.error_count()} "
                          f"errors, first: {e.errors()[0]['loc']}: {e.errors()[0]['msg']})") from None


def _model_config(cfg: TrainConfig, state: dict) -> dict:
    # The head's size is read from the weights: it follows the text encoder's dimension.
    return {"backbone": cfg.model.backbone, "widths": cfg.model.widths, "layers": cfg.model.layers,
            "dropout": cfg.model.dropout, "embed_dim": int(state["regressor.weight"].shape[0])}


def release_from_checkpoint(path: str | Path, shards: str | Path | None = None,
                            config: str | Path | None = None) -> dict:
    """The release dict of one of our checkpoints (or a run folder's newest one).

    Args:
        path: the checkpoint or run folder.
        shards: see `build_settings`.
        config: a run config (YAML) to use instead of the checkpoint's own: needed for checkpoints
            without one (`trainer.import_checkpoint`'s).

    Raises:
        ExportError: not one of our checkpoints, no config, or the build settings cannot be found.
    """
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ExportError(f"{ckpt_path} is neither one of our checkpoints (a model state_dict) nor a "
                          f"release file (format {FORMAT!r}); got keys {sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__}")
    if config is not None:
        try:
            cfg = load_config(config)
        except ConfigError as e:
            raise ExportError(str(e)) from None
    elif "config" in ckpt:
        cfg = _run_config(ckpt["config"], ckpt_path)
    else:
        raise ExportError(f"{ckpt_path} holds no run config (an imported checkpoint?): pass --config with "
                          "the config it is used with (e.g. configs/author.yaml)")
    state = {k: v.detach().cpu() for k, v in ckpt["model"].items()}
    eval_data = cfg.eval.data(TestSetConfig(name="predict", shards="-"), cfg.data.train, cfg.eval.clips)
    emb = cfg.embeddings.model_dump(mode="json")
    encoder_path = emb.get("model") if emb.get("kind") == "sentence_transformer" else emb.get("vectors")
    fingerprint = vectors_fingerprint(encoder_path) if encoder_path and Path(encoder_path).exists() else None
    if emb.get("class_texts"):
        # The map itself travels with the model: predict embeds labels by the same descriptions.
        emb["class_texts_map"] = load_class_texts(emb["class_texts"])
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": state,
        "model_config": _model_config(cfg, state),
        "eval": eval_data.model_dump(mode="json", exclude={"shards"}),
        "build": build_settings(cfg, shards),
        "embeddings": {**emb, "fingerprint": fingerprint},
        "amp": cfg.optim.amp,
        "train_classes": [dict(c) for c in ckpt.get("train_classes") or []],
        "source": {"checkpoint": ckpt_path.name, "step": int(ckpt.get("step", 0)),
                   "epoch": int(ckpt.get("epoch", 0))},
    }


def load_release(path: str | Path, shards: str | Path | None = None, config: str | Path | None = None) -> dict:
    """A release file as written by `export`, or the same dict made from a checkpoint / run folder.

    Raises:
        ExportError: the file is neither, or is a release of another format version.
    """
    path = resolve_checkpoint(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("format_version") != FORMAT_VERSION:
            raise ExportError(f"{path}: release format_version {obj.get('format_version')}, this code reads "
                              f"{FORMAT_VERSION}; export it again from its checkpoint")
        return obj
    return release_from_checkpoint(path, shards, config)


def export(src: str | Path, out: str | Path, shards: str | Path | None = None,
           config: str | Path | None = None) -> dict:
    """Write the release file of `src` (a checkpoint or run folder) to `out`; returns the dict."""
    release = release_from_checkpoint(src, shards, config)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(release, tmp)
    tmp.replace(out)
    return release


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__.split("\n")[0])
    p.add_argument("src", help="a run folder (its newest checkpoint) or a checkpoint file")
    p.add_argument("out", help="the release file to write (e.g. model.pt)")
    p.add_argument("--shards", help="an eval shard set whose build settings predict should use (default: "
                                    "the run's eval sets)")
    p.add_argument("--config", help="the run config to use instead of the checkpoint's own (needed for "
                                    "imported checkpoints, which have none)")
    args = p.parse_args(argv)
    try:
        release = export(args.src, args.out, args.shards, args.config)
    except (ExportError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(v.numel() for v in release["model"].values())
    print(f"wrote {args.out}: {n} parameters, {release['model_config']['embed_dim']}-d head, "
          f"from {release['source']['checkpoint']} (step {release['source']['step']}); build settings "
          f"from {release['build']['source']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
