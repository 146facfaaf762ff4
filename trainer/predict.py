"""Zero-shot prediction on any video: the top-k of a label list, with cosine scores, without shards.

    python -m trainer.predict --checkpoint runs/author/checkpoints/ckpt_0050000.pt \\
        --labels "juggling balls, knitting, walking the dog" clip1.mp4 clip2.avi folder/
    python -m trainer.predict --checkpoint model.pt --labels-file my_labels.txt --top-k 5 --json out.jsonl videos/

`--checkpoint` takes one of our checkpoints, a run folder (its newest checkpoint) or a release file
(`python -m trainer.export`). Folders are searched recursively for the builder's video extensions.

Each video goes through the run's evaluation, step for step, without building shards:
1. the builder's own per-video step (`sharding.media.process_video`: decode, constant frame rate,
   resize to the short side, encode) with the build settings of the run's eval shards (short side,
   frame rate, codec, crf, speed, gop, ...): the bytes are those `sharding.build --split eval`
   stores for the same file;
2. the run's evaluation graph (`dali_pipelines.graphs.eval_graph`, DALI CPU backend; for JPEG-frames
   eval shards the frame graph, `dali_pipelines.decode.eval_frames_graph`, each needed frame decoded
   once) with the run's eval settings: `eval.clips` clips placed by
   `dali_pipelines.sampler.EvalSampler`, the in-graph resize and centre crop; then
   `dali_pipelines.standardize.standardize`;
3. the model, mean over clips, cosine similarity with the label embeddings.

Labels go through `sharding.class_names.class_text` (the generic rule; `--dataset` adds a dataset's
renames) and the run's text encoder (`embeddings` of the run). A video that cannot be read gets one
`error:` line and the others still run; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from dali_pipelines.graphs import EVAL_INPUTS, EVAL_OUTPUTS, eval_graph, in_order
from dali_pipelines.standardize import standardize
from dali_pipelines.sampler import EvalSampler
from sharding.class_names import class_text, read_class_list
from sharding.encode import JpegFramesEncoder, encode
from sharding.layouts import VIDEO_EXTENSIONS, VideoItem
from sharding.media import process_video
from sharding.reader import ShardTable
from trainer.embeddings import MissingWordsError, StaleCacheError, embeddings_for, vectors_fingerprint
from trainer.export import ExportError, load_release
from trainer.model import build_model


class PredictError(ValueError):
    """Bad input to predict (labels, paths, settings); the message says what to do."""


# ----------------------------------------------------------------------------- labels

def parse_labels(labels: str | None, labels_file: str | None, dataset: str | None = None) -> tuple[list[str], list[str]]:
    """The label names and their class texts, from `--labels "a, b"` or `--labels-file`.

    Returns:
        (names, texts), in the given order.

    Raises:
        PredictError: neither or both given, fewer than two labels, or two labels with the same
            name or the same class text ("Walking dog" and "walking dog").
    """
    if (labels is None) == (labels_file is None):
        raise PredictError("give the candidate labels with exactly one of --labels \"a, b, c\" or --labels-file FILE")
    if labels is not None:
        names = [n.strip() for n in labels.split(",")]
        names = [n for n in names if n]
        where = "--labels"
    else:
        try:
            names = read_class_list(labels_file)  # one per line, '#' comments; duplicates are an error
        except (OSError, ValueError) as e:
            raise PredictError(f"--labels-file: {e}") from None
        where = labels_file
    if not names:
        raise PredictError(f"{where}: the label list is empty; give at least two labels")
    if len(names) < 2:
        raise PredictError(f"{where}: only one label ({names[0]!r}): zero-shot prediction ranks labels "
                           "against each other, give at least two")
    texts = [class_text(n, dataset) for n in names]
    for what, items in (("name", [n.lower() for n in names]), ("class text", texts)):
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if item in seen:
                raise PredictError(f"{where}: labels {names[seen[item]]!r} and {names[i]!r} have the same "
                                   f"{what} ({item!r}): remove one of them")
            seen[item] = i
    return names, texts


def embed_labels(embeddings: dict, texts: list[str], vectors: str | None = None) -> np.ndarray:
    """Label embeddings with the run's text encoder: (L, D) float32 unit rows.

    Args:
        embeddings: the release's `embeddings` (the run's section plus the encoder's fingerprint).
        texts: class texts.
        vectors: another path of the same vectors file / model folder (when it moved).

    Raises:
        PredictError: the encoder is missing or is not the one the model was trained with.
    """
    kind = embeddings.get("kind", "word_vectors")
    key = "model" if kind == "sentence_transformer" else "vectors"
    path = vectors or embeddings.get(key)
    if path is None or not Path(path).exists():
        raise PredictError(f"the run's text encoder {path} is not here: pass --vectors PATH (the same "
                           "vectors file or model folder the model was trained with)")
    expected = embeddings.get("fingerprint")
    if expected is not None:
        got = vectors_fingerprint(path)
        if (got["size"], got["sha256"]) != (expected["size"], expected["sha256"]):
            raise PredictError(f"{path} is not the text encoder the model was trained with (that was "
                               f"{expected['name']}: {expected['size']} bytes, sha256 {expected['sha256'][:12]}; "
                               f"this is {got['size']} bytes, sha256 {got['sha256'][:12]})")
    # The run's rules: kind, options, and its class_texts (a label that is a key gets its descriptions).
    return embeddings_for({**embeddings, key: path}, texts, None)


# ----------------------------------------------------------------------------- videos

def find_videos(paths: list[str]) -> tuple[list[Path], bool]:
    """Expand folders (recursively, by the builder's video extensions, sorted); files are kept as given.

    Returns:
        (videos, any folder given).

    Raises:
        PredictError: no paths, a path that does not exist, or folders without any video.
    """
    if not paths:
        raise PredictError("give at least one video file or folder")
    out: list[Path] = []
    folder = False
    for p in map(Path, paths):
        if p.is_dir():
            folder = True
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
            if not found:
                raise PredictError(f"{p}: no video files in this folder (extensions: "
                                   f"{' '.join(sorted(VIDEO_EXTENSIONS))})")
            out += found
        elif p.exists():
            out.append(p)  # any file: PyAV decides whether it is a video
        else:
            raise PredictError(f"{p} does not exist")
    return out, folder


def check_build(build: dict) -> None:
    """Raises PredictError when predict's CPU graph cannot decode what the run's builder wrote."""
    if build["codec"] not in ("vp9", "jpeg"):
        # The graph runs on DALI's CPU backend, whose video decoder takes VP8/VP9 only.
        raise PredictError(f"the run's eval shards are {build['codec']} ({build['source']}), which DALI "
                           "decodes on the GPU only; predict's graph runs on the CPU backend: pass --shards "
                           "with a VP9 or JPEG-frames eval set built with the same settings")


class _PreparedVideo:
    """One video after the builder's step: its bytes and the eval sampler's draw."""

    def __init__(self, encoded: np.ndarray, draw):
        self.encoded, self.draw = encoded, draw


class PredictSource:
    """Per-sample callback of `eval_graph`: video i of the list, decoded and encoded as the builder
    does, with the frames / crop / size `EvalSampler` draws for it (the evaluation's own sampler,
    on a one-row table). A video that fails is recorded in `errors` and a filler takes its place,
    so the pipeline keeps running; iterations past the list's end get the filler too (DALI
    prefetches ahead). `warnings[i]`: what the builder would note in its manifest (a video cut
    short: the frames that decode are used).

    Args:
        videos: the paths, in order.
        build: the release's build settings.
        eval_cfg: the release's eval settings.
    """

    def __init__(self, videos: list[Path], build: dict, eval_cfg: dict):
        check_build(build)
        self.videos, self.build, self.eval_cfg = videos, build, eval_cfg
        # the graph's inputs in its order; "size" only with an in-graph resize (as sources.EvalSource)
        self.names = EVAL_INPUTS if eval_cfg["resize_short"] is not None else EVAL_INPUTS[:-1]
        self.errors: dict[int, str] = {}
        self.warnings: dict[int, str] = {}
        self.batch_size = 1
        # The builder's worker options of an eval build with these settings (sharding.media.Videos).
        self.opts = {"media": "video", "split": "eval", "segment_frames": None,
                     **{k: build[k] for k in ("short_side", "fps", "codec", "container", "crf", "speed", "gop",
                                              "clip_span", "strict_frame_count")},
                     "jpeg_quality": build.get("jpeg_quality") or 90}  # releases before it: the builder's default
        # A flat grey frame of the short side: decodes everywhere, fits any crop the run allows.
        side = int(build["short_side"])
        planes = np.full((side * 3 // 2, side), 128, np.uint8)
        if build["codec"] == "jpeg":
            enc = JpegFramesEncoder(side, side, self.opts["jpeg_quality"])
            enc.add(planes)
            grey = enc.finish()
        else:
            grey = encode([planes], side, side, 25, build["codec"], build["crf"], build["speed"], build["gop"],
                          build["container"])
        self._filler = self._drawn(grey, 1, side, side)

    def _drawn(self, data: bytes, num_frames: int, width: int, height: int) -> _PreparedVideo:
        e = self.eval_cfg
        table = ShardTable.from_columns(
            {"keys": np.array(["predict"]), "video_ids": np.array(["predict"]), "labels": np.zeros(1, np.int64),
             "num_frames": np.array([num_frames]), "video_num_frames": np.array([num_frames]),
             "first_frame": np.zeros(1, np.int64), "segment": np.zeros(1, np.int64),
             "own_start": np.zeros(1, np.int64), "own_count": np.ones(1, np.int64),
             "width": np.array([width]), "height": np.array([height]),
             "offset": np.zeros(1, np.int64), "size": np.array([len(data)])},
            info={"encoding": {"clip_span": 1}})
        # NOTE: with clip_positions 'random' the clips are drawn for video index 0 of this one-row
        # table, not the index the video had in an eval set (uniform, the default, has no index).
        sampler = EvalSampler(table, batch_size=1, num_clips=e["num_clips"], clip_len=e["clip_len"],
                              stride=e["stride"], clip_positions=e["clip_positions"], seed=e["seed"],
                              crop=e["crop"], resize_short=e["resize_short"])
        return _PreparedVideo(np.frombuffer(data, np.uint8), sampler.draw(0))

    def prepare(self, i: int) -> _PreparedVideo:
        """Video i as the graph gets it (or the filler, with the reason in `errors[i]`)."""
        if i >= len(self.videos):
            return self._filler
        path = str(self.videos[i])
        r = process_video(VideoItem(path, "predict", "predict"), 0, self.opts)  # never raises: errors are returned
        if "error" in r:
            self.errors[i] = r["error"]
            return self._filler
        _, _, data, meta = r["samples"][0]  # an eval build stores one sample per video
        if r.get("warning"):
            self.warnings[i] = r["warning"]["reason"]
        try:
            return self._drawn(data, meta["num_frames"], meta["width"], meta["height"])
        except ValueError as e:  # smaller than the run's crop (EvalSampler)
            self.errors[i] = str(e)
            return self._filler

    def __call__(self, sample_info):
        p = self.prepare(sample_info.iteration)
        d = p.draw
        values = dict(encoded=p.encoded, label=np.array(0, np.int32), video=np.array(sample_info.iteration, np.int32),
                      frame_idx=d.frame_idx, crop=np.array([d.crop_x, d.crop_y], np.int32),
                      row=np.array(0, np.int64), size=np.array([d.width, d.height], np.float32))
        return in_order(self.names, **values)


class FrameBatches:
    """Batch callback of `decode.eval_frames_graph` for a run whose eval shards are JPEG frames:
    call j returns video j's distinct clip frames (its JPEGs cut at their offsets, as the evaluation's
    frame stream reads them from a shard), each with the draw's crop, stream index j and resize size;
    `inverse[j]` places them back into the N*T clip frames. DALI calls it in order, one call per run."""

    batch = True  # graphs.source_node: one call per batch (with DALI's BatchInfo), of any size up to the pipeline's

    def __init__(self, source: PredictSource, resize: bool):
        from dali_pipelines.decode import FRAME_INPUTS

        self.source = source
        self.names = FRAME_INPUTS if resize else FRAME_INPUTS[:-1]
        self.inverse: dict[int, np.ndarray] = {}

    def __call__(self, batch_info):
        from sharding.formats import jpeg_frame_offsets

        j = batch_info.iteration
        p = self.source.prepare(j)
        d = p.draw
        data = p.encoded.tobytes()
        bounds = jpeg_frame_offsets(data) + [len(data)]
        uniq, self.inverse[j] = np.unique(d.frame_idx, return_inverse=True)
        crop = np.array([d.crop_x, d.crop_y], np.int32)
        size = np.array([d.width, d.height], np.float32)
        values = dict(encoded=[p.encoded[bounds[f]:bounds[f + 1]] for f in uniq], crop=[crop] * len(uniq),
                      k=[np.array(j, np.int64)] * len(uniq), size=[size] * len(uniq))
        return tuple(values[n] for n in self.names)


def jpeg_clip_batches(videos: list[Path], build: dict, eval_cfg: dict, device: torch.device):
    """`clip_batches` for JPEG-frames eval settings: the evaluation's frame graph (each needed frame
    decoded once by DALI's image decoder, resized and cropped as `JpegFramesEvalLoader` does), then
    the clips gathered and standardized in torch."""
    from dali_pipelines.decode import eval_frames_graph

    source = PredictSource(videos, build, eval_cfg)
    frames = FrameBatches(source, resize=eval_cfg["resize_short"] is not None)
    n, t = eval_cfg["num_clips"], eval_cfg["clip_len"]
    pipe = eval_frames_graph(frames, device="cpu", crop=eval_cfg["crop"], py_workers=0, prefetch=1,
                             batch_size=n * t, num_threads=max(1, int(eval_cfg.get("num_threads", 1))),
                             device_id=None, prefetch_queue_depth=1)
    pipe.build()
    for i in range(len(videos)):
        crops, ks = pipe.run()
        if not np.all(ks.as_array() == i):
            raise RuntimeError(f"predict's frame pipeline returned another video's frames for {i}")
        if i in source.errors:
            yield i, None, source.errors[i], None
            continue
        u = torch.from_numpy(crops.as_array()[:, :, 0])  # (U, C, H, W) distinct frames
        x = u[torch.from_numpy(frames.inverse.pop(i))].reshape(n, t, *u.shape[1:]).transpose(1, 2)  # (N, C, T, H, W)
        yield i, standardize(x.to(device), eval_cfg["standardization"]).unsqueeze(0), None, source.warnings.get(i)


def clip_batches(videos: list[Path], build: dict, eval_cfg: dict, device: torch.device):
    """Yield (index, clips (1, N, C, T, H, W) float32 on `device` or None, error or None, warning
    or None) per video."""
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    if build["codec"] == "jpeg":
        yield from jpeg_clip_batches(videos, build, eval_cfg, device)
        return

    source = PredictSource(videos, build, eval_cfg)
    pipe = eval_graph(source, device="cpu", num_clips=eval_cfg["num_clips"], clip_len=eval_cfg["clip_len"],
                      crop=eval_cfg["crop"], py_workers=0,
                      prefetch=1, batch_size=1, num_threads=max(1, int(eval_cfg.get("num_threads", 1))),
                      device_id=None, prefetch_queue_depth=1)
    it = DALIGenericIterator(pipe, list(EVAL_OUTPUTS), size=-1, auto_reset=False)
    for i in range(len(videos)):
        out = next(it)[0]
        if int(out["video"][0]) != i:
            raise RuntimeError(f"predict's pipeline returned video {int(out['video'][0])} for {i}")
        if i in source.errors:
            yield i, None, source.errors[i], None
            continue
        clips = standardize(out["clips"].to(device), eval_cfg["standardization"])
        yield i, clips, None, source.warnings.get(i)


# ----------------------------------------------------------------------------- the command

def load_model(release: dict, device: torch.device):
    m = release["model_config"]
    model = build_model(m["backbone"], m["embed_dim"], m["dropout"], m["widths"], m["layers"])
    model.load_state_dict(release["model"])
    return model.to(device).eval()


def topk(pred: np.ndarray, label_emb: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k labels of highest cosine similarity with one prediction: [(label index, cosine)].

    Example: pred (1, 0), labels (0.6, 0.8), (1, 0), (0, 1) and k=2 -> [(1, 1.0), (0, 0.6)].
    """
    p = pred / np.linalg.norm(pred)
    c = label_emb / np.linalg.norm(label_emb, axis=1, keepdims=True)
    sim = c.astype(np.float64) @ p.astype(np.float64)  # (L,)
    order = np.argsort(-sim, kind="stable")[:k]
    return [(int(i), float(sim[i])) for i in order]


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring. Exit code 0, 1 (some videos failed) or 2 (bad input)."""
    p = argparse.ArgumentParser(prog="python -m trainer.predict", description=__doc__.split("\n")[0])
    p.add_argument("videos", nargs="*", help="video files and folders (searched recursively)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint, a run folder or a release file (trainer.export)")
    p.add_argument("--labels", help='comma-separated candidate labels: "juggling balls, knitting"')
    p.add_argument("--labels-file", help="candidate labels, one per line ('#' comments)")
    p.add_argument("--dataset", help="apply this dataset's class-name renames to the labels (ucf101, hmdb51, kinetics700)")
    p.add_argument("--top-k", type=int, default=3, help="labels shown per video (default 3)")
    p.add_argument("--json", help="also write one JSON line per video to this file")
    p.add_argument("--device", default="cpu", help="torch device of the model: cpu (default) or cuda[:N]")
    p.add_argument("--vectors", help="the run's vectors file / model folder, if it moved since training")
    p.add_argument("--shards", help="with a checkpoint: an eval shard set whose build settings to use "
                                    "(default: the run's eval sets)")
    p.add_argument("--config", help="with a checkpoint: the run config to use instead of its own (imported "
                                    "checkpoints have none)")
    args = p.parse_args(argv)
    try:
        if args.top_k < 1:
            raise PredictError(f"--top-k must be at least 1, got {args.top_k}")
        names, texts = parse_labels(args.labels, args.labels_file, args.dataset)
        videos, any_folder = find_videos(args.videos)
        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            raise PredictError(f"--device {args.device!r}: {e}") from None
        if device.type == "cuda" and torch.cuda.device_count() == 0:  # NVML: no driver init before the DALI graph
            raise PredictError(f"--device {args.device}: CUDA is not available here; use --device cpu")
        release = load_release(args.checkpoint, args.shards, args.config)
        check_build(release["build"])
        label_emb = embed_labels(release["embeddings"], texts, args.vectors)
        if label_emb.shape[1] != release["model_config"]["embed_dim"]:
            raise PredictError(f"the text encoder gives {label_emb.shape[1]}-d embeddings but the model's head "
                               f"is {release['model_config']['embed_dim']}-d: not the run's encoder")
        model = load_model(release, device)
    except (PredictError, ExportError, MissingWordsError, StaleCacheError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    amp = torch.bfloat16 if release.get("amp") == "bf16" and device.type == "cuda" else None
    k = min(args.top_k, len(names))
    width = max(len(n) for n in names)
    failed = 0
    out = open(args.json, "w", encoding="utf-8") if args.json else None
    bar = None
    if any_folder:
        from tqdm import tqdm

        bar = tqdm(total=len(videos), unit="video", file=sys.stderr, dynamic_ncols=True)
    try:
        with torch.no_grad():
            for i, clips, error, warning in clip_batches(videos, release["build"], release["eval"], device):
                path = str(videos[i])
                if warning:
                    line = f"warning: {path}: {warning}"
                    (bar.write(line, file=sys.stderr) if bar else print(line, file=sys.stderr))
                if error is not None:
                    failed += 1
                    line = f"error: {path}: {error}"
                    (bar.write(line, file=sys.stderr) if bar else print(line, file=sys.stderr))
                    record = {"video": path, "error": error}
                else:
                    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                        pred = model(clips).float()[0].cpu().numpy()  # (1, N, C, T, H, W) -> (D,)
                    top = topk(pred, label_emb, k)
                    # a small table per video: rank, label, cosine score
                    shown = "\n".join([path] + [f"  {r}. {names[j]:<{width}}  {s:6.3f}" for r, (j, s) in enumerate(top, 1)])
                    (bar.write(shown) if bar else print(shown))
                    record = {"video": path, "top": [{"label": names[j], "text": texts[j], "score": s}
                                                     for j, s in top],
                              "embedding": [float(x) for x in pred]}
                    if warning:
                        record["warning"] = warning
                if out:
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                if bar:
                    bar.update()
    finally:
        if bar:
            bar.close()
        if out:
            out.close()
    if failed:
        print(f"{failed} of {len(videos)} videos could not be read", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
