"""DALI graphs: training clips and multi-clip evaluation, the same code on CPU and GPU.

The samplers (sampler.py) decide everything random in Python; the sources below turn a rank's sample
number into the sample's encoded bytes (one `os.pread` at the table's offset) plus the drawn
window, crop and flip, and `fn.external_source` feeds them to the graph. The source is infinite:
sample number = `iteration * batch_size + idx_in_batch + offset`, so restoring a loader only sets
`offset` before the pipeline is built.

Device: `device="cpu"` decodes with the CPU backend (VP8/VP9/MJPEG only); `"gpu"` uses the mixed
(NVDEC) decoder and every later operator follows its input onto the GPU. Nothing else differs.

Parallel sources and CUDA (DALI docs, docs/DESIGN.md): with `py_workers > 0` the source runs in worker
processes started by `fork`. Call `start_py_workers()` on every pipeline (loader.py does it when the
loader is made) BEFORE anything touches CUDA (torch.cuda, NCCL init); build the pipelines later.
The shared offset lives in an anonymous shared mapping inherited by the forked workers, which is
why it can still be set after the workers started.
"""

from __future__ import annotations

import mmap

import numpy as np
from nvidia.dali import fn, pipeline_def, types
import nvidia.dali.math as dmath

from dali_pipelines.sampler import EvalSampler, TrainSampler
from sharding.reader import SampleReader, ShardTable

# Kinetics statistics on x / 255 (docs/DESIGN.md, the paper's transforms), RGB order.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


class _Source:
    """Shared part of the sources: the shared offset and the file reading (picklable)."""

    def __init__(self, table: ShardTable, batch_size: int):
        self.batch_size = batch_size
        # One int64 shared with forked workers (MAP_SHARED | MAP_ANONYMOUS).
        self._offset = np.frombuffer(mmap.mmap(-1, 8), dtype=np.int64)
        self.reader = SampleReader(table)

    @property
    def offset(self) -> int:
        """Sample number of the pipeline's first sample."""
        return int(self._offset[0])

    @offset.setter
    def offset(self, value: int) -> None:
        self._offset[0] = value

    def __getstate__(self):
        # Pickled (spawn): the offset is frozen at its current value (the reader reopens its files).
        state = self.__dict__.copy()
        state["_offset"] = self._offset.copy()
        return state

    def sample_number(self, sample_info) -> int:
        return (sample_info.iteration * self.batch_size + sample_info.idx_in_batch
                + int(self._offset[0]))

    def read(self, row: int) -> np.ndarray:
        """The encoded video member of a row as a (nbytes,) uint8 array."""
        return np.frombuffer(self.reader.read(row), dtype=np.uint8)

    def read_window(self, row: int, start: int, span: int) -> tuple[np.ndarray, int]:
        """`SampleReader.read_window` as a (nbytes,) uint8 array and the window's first frame."""
        data, first = self.reader.read_window(row, start, span)
        return np.frombuffer(data, dtype=np.uint8), first


class TrainSource(_Source):
    """Per-sample callback of the training graph.

    Returns (numpy arrays, never numpy scalars: DALI rejects those): encoded (nbytes,) uint8,
    label () int32, start () int32 (the window's first frame in the stored sample),
    decode_start () int32 (the same in the encoded bytes: `read_window`), crop (2,) int32 = [x, y],
    flip () int32, row () int64, and only with an in-graph resize, size (2,) float32 =
    [width, height] to resize to.
    """

    def __init__(self, table: ShardTable, sampler: TrainSampler):
        super().__init__(table, sampler.batch_size)
        self.sampler = sampler
        self.num_outputs = 8 if sampler.resize_short is not None else 7

    def __call__(self, sample_info):
        d = self.sampler.draw(self.sample_number(sample_info))
        data, decode_start = self.read_window(d.row, d.start, self.sampler.span)
        out = (data, np.array(d.label, np.int32), np.array(d.start, np.int32),
               np.array(decode_start, np.int32), np.array([d.crop_x, d.crop_y], np.int32),
               np.array(d.flip, np.int32), np.array(d.row, np.int64),
               np.array([d.width, d.height], np.float32))
        return out[: self.num_outputs]  # DALI warns about (and wastes) an unused size output


class EvalSource(_Source):
    """Per-sample callback of the evaluation graph.

    Returns: encoded (nbytes,) uint8, label () int32, video () int32 (-1 = padding),
    frame_idx (N*T,) int32, crop (2,) int32 = [x, y], row () int64 and, only with an in-graph
    resize, size (2,) float32.
    """

    def __init__(self, table: ShardTable, sampler: EvalSampler):
        super().__init__(table, sampler.batch_size)
        self.sampler = sampler
        self.num_outputs = 7 if sampler.resize_short is not None else 6

    def __call__(self, sample_info):
        d = self.sampler.draw(self.sample_number(sample_info))
        out = (self.read(d.row), np.array(d.label, np.int32), np.array(d.video, np.int32),
               d.frame_idx, np.array([d.crop_x, d.crop_y], np.int32), np.array(d.row, np.int64),
               np.array([d.width, d.height], np.float32))
        return out[: self.num_outputs]


def decode_video(encoded, device: str, start_frame=None, sequence_length=None, stride=None,
                 pad_mode: str = "edge"):
    """The one call of DALI's video decoder (its arguments moved between DALI versions).

    Args:
        encoded: DataNode of (nbytes,) uint8 encoded videos (a whole container each).
        device: "cpu" or "mixed" (NVDEC; output on the GPU).
        start_frame: None to decode every frame, else a DataNode / int: first frame of the window.
            `start_frame`, `sequence_length` and `stride` are argument inputs in DALI 2.4, so
            they may differ per sample.
        sequence_length: frames to return from `start_frame`.
        stride: step between returned frames.
        pad_mode: what fills frames past the end; 'edge' repeats the last frame, so a 10-frame
            video asked for 16 frames from 0 returns frames 0..9 then frame 9 six more times.

    Returns:
        DataNode (F, H, W, C) uint8 RGB, layout "FHWC".

    The decoder cannot seek in memory: a window costs decoding from frame 0 up to its end, which
    is why training reads keyframe-indexed ivf samples cut at the keyframe before the window
    (`_Source.read_window`), or short segments (docs/DESIGN.md).
    """
    if start_frame is None:
        return fn.decoders.video(encoded, device=device)
    return fn.decoders.video(encoded, device=device, start_frame=start_frame,
                             sequence_length=sequence_length, stride=stride, pad_mode=pad_mode)


def augment(frames, *, crop: int, crop_xy, flip=None, size=None, standardization: str = "per_frame"):
    """Resize, crop, flip and standardize a sequence; shared by the training and evaluation graphs.

    The graph stops short of the float clip: it returns the crop as uint8 (C, F, crop, crop) and
    each value's affine map, `clip = clip_u8 * scale + shift`, which `standardize` (torch) applies
    where the batch lands. That last pass writes 4 bytes per value; in torch it is one vectorized
    pass (0.2 CPU-ms per 16-frame clip, or nothing to speak of on the GPU), in DALI's CPU
    arithmetic about 2 ms; the uint8 batch is also a quarter of the copy out of the pipeline.

    Args:
        frames: DataNode (F, H, W, C) uint8.
        crop: side of the square crop.
        crop_xy: DataNode (2,) int32 per sample: the crop's top-left pixel [x, y] in the
            (resized) frame. Exact pixels, so a test can redo the crop in numpy.
        flip: DataNode () int32 per sample (1 = mirror horizontally) or None for no flip.
        size: DataNode (2,) float32 [width, height] to resize to first, or None to keep the size.
            Computed in Python (sampler.resized_size) so the crop positions are known exactly.
        standardization: 'per_frame': for each frame, on x / 255,
            `(x - mean) / max(std, 1 / sqrt(H * W * C))` over its crop's H*W*C values (exactly
            tf.image.per_image_standardization; population std). 'mean_std':
            `(x / 255 - KINETICS_MEAN) / KINETICS_STD` per channel.

    Returns:
        (clips, scale, shift): clips DataNode (C, F, crop, crop) uint8; scale and shift float32,
        (1, F, 1, 1) for 'per_frame' and (C, 1, 1, 1) for 'mean_std' (they broadcast on clips).
    """
    if size is not None:
        frames = fn.resize(frames, resize_x=size[0], resize_y=size[1])
    frames = fn.slice(frames, start=crop_xy, shape=[crop, crop], axis_names="WH")  # (F, crop, crop, C)
    # The 1/255 is folded into scale and shift, so the statistics are taken on the uint8 values.
    if standardization == "per_frame":
        mean = fn.reductions.mean(frames, axis_names="HWC", keep_dims=True, dtype=types.FLOAT)  # (F, 1, 1, 1)
        std = fn.reductions.std_dev(frames, mean, axis_names="HWC", keep_dims=True)  # (F, 1, 1, 1)
        # (x/255 - m/255) / max(s/255, f) == (x - m) / max(s, 255 f); tf's floor f keeps a flat
        # frame finite (it becomes all zeros).
        scale = 1.0 / dmath.max(std, float(255.0 / np.sqrt(crop * crop * 3)))
        shift = -mean * scale
        scale, shift = (fn.transpose(t, perm=[3, 0, 1, 2]) for t in (scale, shift))  # (F,1,1,1) -> (1,F,1,1)
    elif standardization == "mean_std":
        # (x/255 - mean) / std == x * (1 / (255 std)) - mean / std, per channel
        std, mean = np.array(KINETICS_STD, np.float64), np.array(KINETICS_MEAN, np.float64)
        scale = fn.constant(fdata=(1.0 / (255.0 * std)).tolist(), shape=[3, 1, 1, 1], dtype=types.FLOAT)
        shift = fn.constant(fdata=(-mean / std).tolist(), shape=[3, 1, 1, 1], dtype=types.FLOAT)
    else:
        raise ValueError(f"unknown standardization {standardization!r}")
    # One fused pass: mirror (per sample) and (F,H,W,C) -> (C,F,H,W), staying uint8.
    clips = fn.crop_mirror_normalize(frames, mirror=0 if flip is None else flip, dtype=types.UINT8,
                                     output_layout="CFHW")
    return clips, scale, shift


def _source_node(source, num_outputs: int, py_workers: int, prefetch: int):
    if py_workers > 0:
        return fn.external_source(source=source, parallel=True, batch=False, num_outputs=num_outputs,
                                  prefetch_queue_depth=prefetch)
    return fn.external_source(source=source, batch=False, num_outputs=num_outputs)


@pipeline_def
def train_graph(source: TrainSource, *, device: str, clip_len: int, stride: int, crop: int,
                standardization: str, py_workers: int, prefetch: int):
    """Training clips: one window + crop + flip per sample.

    Outputs: clips (C, T, crop, crop) uint8, scale and shift float32 (`augment`: the float clip is
    clips * scale + shift), label () int32, row () int64, start () int32, crop (2,) int32 [x, y],
    flip () int32.
    """
    encoded, label, start, decode_start, crop_xy, flip, row, *size = _source_node(
        source, source.num_outputs, py_workers, prefetch)
    frames = decode_video(encoded, "mixed" if device == "gpu" else "cpu", start_frame=decode_start,
                          sequence_length=clip_len, stride=stride)  # (T, H, W, C)
    clips, scale, shift = augment(frames, crop=crop, crop_xy=crop_xy, flip=flip,
                                  size=size[0] if size else None,
                                  standardization=standardization)  # (C, T, crop, crop) uint8
    return clips, scale, shift, label, row, start, crop_xy, flip


@pipeline_def
def eval_graph(source: EvalSource, *, device: str, num_clips: int, clip_len: int, crop: int,
               standardization: str, py_workers: int, prefetch: int):
    """Evaluation: decode each whole video once, gather its N clips, centre crop.

    Outputs: clips (N, C, T, crop, crop) uint8, scale and shift float32 ((N, 1, T, 1, 1) or
    (1, C, 1, 1, 1): the float clips are clips * scale + shift), label () int32, video () int32,
    row () int64.
    """
    encoded, label, video, frame_idx, crop_xy, row, *size = _source_node(
        source, source.num_outputs, py_workers, prefetch)
    frames = decode_video(encoded, "mixed" if device == "gpu" else "cpu")  # (F, H, W, C)
    # Re-decoding per clip (`frames=`) restarts at frame 0 each time: 25x slower (docs/DESIGN.md).
    frames = fn.sequence_rearrange(frames, new_order=frame_idx)  # (N*T, H, W, C)
    x, scale, shift = augment(frames, crop=crop, crop_xy=crop_xy, size=size[0] if size else None,
                              standardization=standardization)  # (C, N*T, crop, crop) uint8
    x = fn.reshape(x, shape=[3, num_clips, clip_len, crop, crop], layout="")  # (C,N*T,H,W) -> (C,N,T,H,W)
    x = fn.transpose(x, perm=[1, 0, 2, 3, 4])  # (C,N,T,H,W) -> (N,C,T,H,W)
    if standardization == "per_frame":  # (1, N*T, 1, 1) -> (1, N, T, 1, 1) -> (N, 1, T, 1, 1)
        scale, shift = (fn.transpose(fn.reshape(t, shape=[1, num_clips, clip_len, 1, 1], layout=""),
                                     perm=[1, 0, 2, 3, 4]) for t in (scale, shift))
    else:  # per channel: (C, 1, 1, 1) -> (1, C, 1, 1, 1)
        scale, shift = (fn.reshape(t, shape=[1, 3, 1, 1, 1], layout="") for t in (scale, shift))
    return x, scale, shift, label, video, row
