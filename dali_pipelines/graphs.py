"""DALI graphs: training clips and multi-clip evaluation, the same code on CPU and GPU.

Each graph declares its inputs (what its source returns, in order: `TRAIN_INPUTS`, `EVAL_INPUTS`)
and its outputs (what the loader's iterator names: `TRAIN_OUTPUTS`, `EVAL_OUTPUTS`) once, here;
the sources (sources.py) build their tuples with `in_order`, the graphs unpack their inputs with
`source_node` and return `in_order(...)`, and the loaders (loader.py) name the iterator's outputs
with the same tuples.

Device: `device="cpu"` decodes with the CPU backend (VP8/VP9/MJPEG only); `"gpu"` uses the mixed
(NVDEC) decoder, or with `decode_device="cpu"` the CPU decoder on the pipeline's threads, and every
later operator follows the frames onto the GPU. Nothing else differs.
"""

from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types
import nvidia.dali.math as dmath


# Inputs: what the source returns per sample, in order; "size" only with an in-graph resize
# (sources.TrainSource / EvalSource document each array).
TRAIN_INPUTS = ("encoded", "label", "start", "decode_start", "crop", "flip", "row", "size")
EVAL_INPUTS = ("encoded", "label", "video", "frame_idx", "crop", "row", "size")
# Outputs, in order; `images.image_train_graph` returns TRAIN_OUTPUTS too.
TRAIN_OUTPUTS = ("clips", "label", "row", "start", "crop", "flip")
EVAL_OUTPUTS = ("clips", "label", "video", "row")


def in_order(names: tuple[str, ...], **values) -> tuple:
    """The values of `names`, in that order (values not named are dropped).

    Args:
        names: declared names (e.g. `TRAIN_OUTPUTS`).
        **values: at least one value per name.

    Returns:
        tuple, one value per name.

    >>> in_order(("b", "a"), a=1, b=2, c=3)
    (2, 1)
    """
    missing = [n for n in names if n not in values]
    if missing:
        raise KeyError(f"no value for {missing} of the declared names {names}")
    return tuple(values[n] for n in names)


def source_node(source, py_workers: int, prefetch: int) -> dict:
    """The graph's `fn.external_source` of a per-sample source, as {input name: DataNode}.

    Args:
        source: a callable of DALI's `SampleInfo` with `names`, the inputs it returns in order
            (sources.py); or, with a true `batch` attribute, a callable of DALI's `BatchInfo`
            returning a batch per output (lists of arrays; any batch size up to the pipeline's).
        py_workers: 0 = call it in the main process; else in DALI's forked worker processes.
        prefetch: batches each worker prepares ahead.
    """
    if getattr(source, "batch", False):  # a callable of DALI's BatchInfo returning whole batches
        nodes = fn.external_source(source=source, batch=True, batch_info=True, num_outputs=len(source.names),
                                   **(dict(parallel=True, prefetch_queue_depth=prefetch) if py_workers > 0 else {}))
    elif py_workers > 0:
        nodes = fn.external_source(source=source, parallel=True, batch=False,
                                   num_outputs=len(source.names), prefetch_queue_depth=prefetch)
    else:
        nodes = fn.external_source(source=source, batch=False, num_outputs=len(source.names))
    return dict(zip(source.names, nodes))


def decode_video(encoded, device: str, decode_device: str = "gpu", start_frame=None,
                 sequence_length=None, stride=None, pad_mode: str = "edge"):
    """The one call of DALI's video decoder (its arguments moved between DALI versions).

    Args:
        encoded: DataNode of (nbytes,) uint8 encoded videos (a whole container each).
        device: where the graph runs, "cpu" or "gpu"; the frames are returned there.
        decode_device: with device "gpu": "gpu" decodes with the mixed (NVDEC) decoder, "cpu" on
            the pipeline's CPU threads and then copies the frames to the GPU, where the later
            operators (resize, crop, flip, layout) follow them. Ignored with device "cpu".
        start_frame: None to decode every frame, else a DataNode / int: first frame of the window.
            `start_frame`, `sequence_length` and `stride` are argument inputs in DALI 2.4, so
            they may differ per sample.
        sequence_length: frames to return from `start_frame`.
        stride: step between returned frames.
        pad_mode: what fills frames past the end; 'edge' repeats the last frame, so a 10-frame
            video asked for 16 frames from 0 returns frames 0..9 then frame 9 six more times.

    Returns:
        DataNode (F, H, W, C) uint8 RGB, layout "FHWC", on `device`.

    The decoder cannot seek in memory: a window costs decoding from frame 0 up to its end, which
    is why training reads keyframe-indexed ivf samples cut at the keyframe before the window
    (`sources.SampleSource.read_window`), or short segments (docs/DESIGN.md).
    """
    backend = "mixed" if device == "gpu" and decode_device == "gpu" else "cpu"
    window = {} if start_frame is None else dict(start_frame=start_frame, sequence_length=sequence_length,
                                                 stride=stride, pad_mode=pad_mode)
    frames = fn.decoders.video(encoded, device=backend, **window)
    return frames.gpu() if device == "gpu" and backend == "cpu" else frames


def augment(frames, *, crop: int, crop_xy, flip=None, size=None):
    """Resize, crop and flip a sequence into the uint8 clip; shared by the training and evaluation
    graphs. The standardization follows in torch where the batch lands (`standardize.py`: cheaper
    than DALI's CPU reductions and arithmetic; the uint8 batch is a quarter of the copy out).

    Args:
        frames: DataNode (F, H, W, C) uint8.
        crop: side of the square crop.
        crop_xy: DataNode (2,) int32 per sample: the crop's top-left pixel [x, y] in the
            (resized) frame. Exact pixels, so a test can redo the crop in numpy.
        flip: DataNode () int32 per sample (1 = mirror horizontally) or None for no flip.
        size: DataNode (2,) float32 [width, height] to resize to first, or None to keep the size.
            Computed in Python (sampler.resized_size) so the crop positions are known exactly.

    Returns:
        DataNode (C, F, crop, crop) uint8.
    """
    if size is not None:
        frames = fn.resize(frames, resize_x=size[0], resize_y=size[1])
    # One pass: crop, mirror (per sample) and (F,H,W,C) -> (C,F,H,W), staying uint8 (a separate
    # fn.slice copied the crop once more: benchmarks/RESULTS.md, per-clip overhead). The crop's
    # pixel [x, y] becomes the normalized position x / (W - crop), which DALI multiplies back and
    # rounds: the exact pixel again.
    shape = frames.shape()  # (F, H, W, C)
    xy = fn.cast(crop_xy, dtype=types.FLOAT)
    pos_x = xy[0] / dmath.max(fn.cast(shape[2], dtype=types.FLOAT) - float(crop), 1.0)
    pos_y = xy[1] / dmath.max(fn.cast(shape[1], dtype=types.FLOAT) - float(crop), 1.0)
    return fn.crop_mirror_normalize(frames, crop=[crop, crop], crop_pos_x=pos_x, crop_pos_y=pos_y,
                                    rounding="round", mirror=0 if flip is None else flip,
                                    dtype=types.UINT8, output_layout="CFHW")  # (C, F, crop, crop)


@pipeline_def
def train_graph(source, *, device: str, clip_len: int, stride: int, crop: int, py_workers: int, prefetch: int,
                decode_device: str = "gpu"):
    """Training clips: one window + crop + flip per sample.

    Args:
        source: a `sources.TrainSource` (returns `TRAIN_INPUTS`, the format's window arrays first;
            its `decode` turns them into frames).
        device: "cpu" or "gpu" (every operator after the decoder runs there).
        decode_device: "gpu" (NVDEC) or "cpu" (CPU threads) with device "gpu" (`decode_video`).

    Outputs (`TRAIN_OUTPUTS`; a jpeg_frames set without a resize trains through
    `decode.train_frames_graph` instead): clips (C, T, crop, crop) uint8 (the loader standardizes
    them: `standardize.standardize`), label () int32, row () int64, start () int32, crop
    (2,) int32 [x, y], flip () int32.
    """
    x = source_node(source, py_workers, prefetch)
    # the storage format's step (dali_pipelines/decode.py): video decoder or image decoder
    frames, crop_xy = source.decode.train_frames(x, device, decode_device, clip_len, stride, crop)  # (T, H, W, C)
    clips = augment(frames, crop=crop, crop_xy=crop_xy, flip=x["flip"], size=x.get("size"))  # (C, T, crop, crop)
    return in_order(TRAIN_OUTPUTS, clips=clips, **x)


@pipeline_def
def eval_graph(source, *, device: str, num_clips: int, clip_len: int, crop: int, py_workers: int, prefetch: int,
               decode_device: str = "gpu"):
    """Evaluation: decode each whole video once, gather its N clips, centre crop.

    Args:
        source: a `sources.EvalSource` (returns `EVAL_INPUTS`).
        device, decode_device: as `train_graph`.

    Outputs (`EVAL_OUTPUTS`): clips (N, C, T, crop, crop) uint8 (standardized by the loader),
    label () int32, video () int32, row () int64.
    """
    x = source_node(source, py_workers, prefetch)
    frames = decode_video(x["encoded"], device, decode_device)  # (F, H, W, C)
    # Re-decoding per clip (`frames=`) restarts at frame 0 each time: 25x slower (docs/DESIGN.md).
    frames = fn.sequence_rearrange(frames, new_order=x["frame_idx"])  # (N*T, H, W, C)
    clips = augment(frames, crop=crop, crop_xy=x["crop"], size=x.get("size"))  # (C, N*T, crop, crop) uint8
    clips = fn.reshape(clips, shape=[3, num_clips, clip_len, crop, crop], layout="")  # (C,N*T,H,W) -> (C,N,T,H,W)
    clips = fn.transpose(clips, perm=[1, 0, 2, 3, 4])  # (C,N,T,H,W) -> (N,C,T,H,W)
    return in_order(EVAL_OUTPUTS, clips=clips, **x)
