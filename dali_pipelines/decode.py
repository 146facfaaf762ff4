"""The one place where a shard set's storage format (`sharding.formats`) changes the DALI graphs:
what a training source returns for a window and how the graph turns it into frames. What follows
the frames (resize, crop, flip, layout, standardization) is the same for every format, with one
exception: training on a jpeg_frames set without an in-graph resize is a graph of frames
(`train_frames_graph`: B*T JPEGs per batch, one decoder call, each frame decoded only inside its
crop), and the loader applies the same flip and layout in torch (`frames_to_clips`), because DALI's
CPU tail (16 decoder calls per batch, stacking, crop_mirror_normalize) cost more per clip than
decoding the JPEGs (benchmarks/RESULTS.md); the exactness tests hold both paths to the same
reference. Every graph's clips are standardized by the loader (`standardize.py`).

- Video formats (ivf, webm, mp4): the window's encoded bytes (an ivf member cut at the keyframes
  around it, or a whole member) and the window's first frame in them; DALI's video decoder
  (`graphs.decode_video`: libavcodec on the CPU, NVDEC with `device="mixed"`).
- `jpeg_frames`: the window's frames as separate JPEGs (one contiguous read of the member, split
  at the table's frame offsets); each frame through DALI's image decoder (libjpeg-turbo on the CPU;
  nvJPEG, and the hardware JPEG decoder where the GPU has one, with `device="mixed"`). Exactly
  the clip's frames are decoded, at any stride, and without an in-graph resize only inside the crop.
"""

from __future__ import annotations

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from dali_pipelines.graphs import augment, decode_video, in_order, source_node
from sharding.formats import JpegFrames
from sharding.reader import SampleReader, ShardTable

VIDEO_INPUTS = ("encoded", "decode_start")  # what `VideoDecode` adds to a training source's outputs


class VideoDecode:
    """A window of a video member, decoded by DALI's video decoder."""

    def train_inputs(self, clip_len: int, resize: bool) -> tuple[str, ...]:
        """The source outputs this step needs, in the order the source returns them (`resize`: the
        graph resizes before its crop)."""
        return VIDEO_INPUTS

    def train_arrays(self, reader: SampleReader, d, sampler) -> dict[str, np.ndarray]:
        """The arrays of draw `d` (`sampler.TrainDraw` of `sampler`): encoded (nbytes,) uint8, what
        `SampleReader.read_window` returns; decode_start () int32, the window's first frame in it."""
        data, decode_start = reader.read_window(d.row, d.start, sampler.span)
        return {"encoded": np.frombuffer(data, dtype=np.uint8), "decode_start": np.array(decode_start, np.int32)}

    def train_frames(self, x: dict, device: str, decode_device: str, clip_len: int, stride: int, crop: int):
        """(frames, crop_xy): DataNode (T, H, W, C) uint8 RGB of the window on `device`, and where the
        graph's crop starts in them (here the draw's own position)."""
        return decode_video(x["encoded"], device, decode_device, start_frame=x["decode_start"],
                            sequence_length=clip_len, stride=stride), x["crop"]


class JpegFramesDecode:
    """A window of a `jpeg_frames` member: its T frames, each decoded by DALI's image decoder.

    Without an in-graph resize the training graph is a batch of frames (`train_frames_graph`: one
    decoder call on B*T JPEGs, each decoded only inside the crop) and the loader finishes the clips in
    torch (`frames_to_clips`: flip, layout, standardization), the same values as the video graphs'
    DALI tail (`graphs.augment`), which costs more per clip than decoding does here
    (benchmarks/RESULTS.md). With a resize, whole frames are decoded, stacked and go through
    `graphs.augment` like a video window (`train_frames`).
    """

    def __init__(self, table: ShardTable, hw_decoder_load: float | None = None):
        self.table = table
        self.fmt: JpegFrames = table.format
        self.hw_decoder_load = hw_decoder_load  # mixed decode only (TrainDataConfig.hw_decoder_load)

    def train_inputs(self, clip_len: int, resize: bool) -> tuple[str, ...]:
        return tuple(f"frame{k}" for k in range(clip_len)) + (() if resize else ("crop_pos",))

    def train_arrays(self, reader, d, sampler):
        """frame0 .. frame{T-1}: (nbytes,) uint8 JPEGs of frames start, start + stride, ...; past
        the video's end the last frame again (the video decoder's `pad_mode="edge"`); crop_pos (2,)
        float32: the crop's position as the decoder takes it, x / (W - crop), y / (H - crop)."""
        c = self.table.cut(d.row, d.start, sampler.span)
        data = np.frombuffer(reader.read(d.row, c.begin, c.end), dtype=np.uint8)
        bounds = self.fmt.frame_bounds(self.table, d.row, c)
        picks = np.minimum(np.arange(sampler.clip_len) * sampler.stride, c.num_frames - 1)
        out = {f"frame{k}": data[bounds[i]:bounds[i + 1]] for k, i in enumerate(picks)}
        w, h = max(d.width - sampler.crop, 1), max(d.height - sampler.crop, 1)
        out["crop_pos"] = np.array([d.crop_x / w, d.crop_y / h], np.float32)
        return out

    @staticmethod
    def _backend(device: str, decode_device: str) -> str:
        return "mixed" if device == "gpu" and decode_device == "gpu" else "cpu"

    def _decoder_args(self, backend: str) -> dict:
        """The image decoder's arguments besides its input: on a GPU, the hardware decoder's share."""
        extra = {"hw_decoder_load": self.hw_decoder_load} if backend == "mixed" and self.hw_decoder_load is not None else {}
        return {"device": backend, "output_type": types.RGB, **extra}

    def train_frames(self, x, device, decode_device, clip_len, stride, crop):
        """With an in-graph resize: whole frames (the crop comes after the resize), stacked into
        (T, H, W, C) on `device`, and the draw's crop position."""
        backend = self._backend(device, decode_device)
        frames = [fn.decoders.image(x[f"frame{k}"], **self._decoder_args(backend)) for k in range(clip_len)]
        seq = fn.stack(*frames, axis=0, axis_name="F")  # (T, H, W, C)
        return (seq.gpu() if device == "gpu" and backend == "cpu" else seq), x["crop"]


def frames_to_clips(frames, flip, standardization: str):
    """The torch tail of a jpeg_frames training batch: decoded crops (B, T, H, W, C) uint8 -> float32
    clips (B, C, T, H, W), mirrored where `flip` (B,) is set, laid out and standardized by the one
    copy of `standardize.standardize` (the video graphs' clips get the same standardization)."""
    import torch

    from dali_pipelines.standardize import standardize

    x = frames
    flipped = torch.nonzero(flip.reshape(-1)).reshape(-1).tolist()
    if flipped:
        x = frames.clone()  # DALI's output buffer stays as DALI wrote it
        for b in flipped:
            x[b] = x[b].flip(2)  # mirror W (one copy per flipped clip; masked indexing copies 3x)
    return standardize(x.permute(0, 4, 1, 2, 3), standardization)  # (B, C, T, H, W)


# Training on a jpeg_frames set without an in-graph resize: DALI's batches hold frames, B*T of
# them, decoded by one decoder call; the source returns whole batches (one Python call per batch);
# the clips' numbers (label, row, start, crop, flip) stay in Python: the loader draws them again.
FRAME_TRAIN_INPUTS = ("encoded", "crop_pos")
FRAME_TRAIN_OUTPUTS = ("decoded",)


class TrainFrameBatches:
    """Batch callback of `train_frames_graph`: DALI's iteration i -> the frames of the rank's clips
    i*B + offset .. i*B + B - 1 + offset, in clip order, T per clip (`JpegFramesDecode.train_arrays`:
    one read per window), each with its clip's crop position. `offset` as `sources.SampleSource` (a
    shared value set before the pipeline is built, for resuming)."""

    batch = True  # graphs.source_node: one call per batch (with DALI's BatchInfo)

    def __init__(self, table: ShardTable, sampler, hw_decoder_load: float | None = None):
        from dali_pipelines.sources import SampleSource

        self.decode = JpegFramesDecode(table, hw_decoder_load)
        self.base = SampleSource(table, sampler.batch_size, FRAME_TRAIN_INPUTS)
        self.names, self.reader, self.sampler = FRAME_TRAIN_INPUTS, self.base.reader, sampler

    @property
    def offset(self) -> int:
        return self.base.offset

    @offset.setter
    def offset(self, value: int) -> None:
        self.base.offset = value

    def __call__(self, batch_info):
        s, B, T = self.sampler, self.sampler.batch_size, self.sampler.clip_len
        first = batch_info.iteration * B + self.base.offset
        encoded, crop_pos = [], []
        for n in range(first, first + B):
            a = self.decode.train_arrays(self.reader, s.draw(n), s)
            encoded += [a[f"frame{k}"] for k in range(T)]
            crop_pos += [a["crop_pos"]] * T
        return encoded, crop_pos


@pipeline_def
def train_frames_graph(source, *, device: str, crop: int, py_workers: int, prefetch: int,
                       decode_device: str = "gpu"):
    """Training on a jpeg_frames set without a resize, one frame per sample (batch size B*T):
    `fn.decoders.image_crop` decodes each frame only inside its clip's crop (the same pixels as a full
    decode and crop, tested, for ~40% less decoding). Output (`FRAME_TRAIN_OUTPUTS`): decoded (crop,
    crop, C) uint8 RGB on `device`; the loader makes the clips (`frames_to_clips`)."""
    x = source_node(source, py_workers, prefetch)
    backend = source.decode._backend(device, decode_device)
    pos = x["crop_pos"]
    img = fn.decoders.image_crop(x["encoded"], crop=[crop, crop], crop_pos_x=pos[0], crop_pos_y=pos[1],
                                 **source.decode._decoder_args(backend))
    img = img.gpu() if device == "gpu" and backend == "cpu" else img
    return in_order(FRAME_TRAIN_OUTPUTS, decoded=img)


def decode_for(table: ShardTable, hw_decoder_load: float | None = None) -> VideoDecode | JpegFramesDecode:
    """The decode step of a shard set's training graph, by its storage format."""
    return JpegFramesDecode(table, hw_decoder_load) if isinstance(table.format, JpegFrames) else VideoDecode()


# ------------------------------------------------------------------------------------ evaluation
# A video format's evaluation decodes each whole video once and gathers its N clips in the graph
# (`graphs.eval_graph`). A jpeg_frames video is a set of independent frames, so its evaluation is a
# stream of the frames the clips need, each decoded once (`FrameStream`): DALI's batches hold
# frames, and the loader assembles each video's clips from its decoded frames (`JpegFramesEval`).

FRAME_INPUTS = ("encoded", "crop", "k", "size")  # per frame: JPEG, crop [x, y], stream index, resize
FRAME_OUTPUTS = ("clips", "k")


class FrameStream:
    """The frames an evaluation pass needs, in order: every video slot of the rank's pass
    (`EvalSampler`, padding slots included), each slot's distinct frames in increasing order.

    Attributes:
        slot_ptr: (S + 1,) the frames of slot s are stream entries slot_ptr[s] .. slot_ptr[s + 1].
        inverse: per slot, (N * T,) positions of its clip frames among its distinct frames.
        row, frame, crop, size: per stream entry, its table row, frame index, crop [x, y] and
            resize [w, h].
        padded: entries per pass rounded up to whole DALI batches (the tail repeats the last frame).
    """

    def __init__(self, sampler, frames_per_batch: int):
        rows, frames, crops, sizes, ptr, self.inverse, self.draws = [], [], [], [], [0], [], []
        for n in range(sampler.samples_per_pass):
            d = sampler.draw(n)
            uniq, inv = np.unique(d.frame_idx, return_inverse=True)
            self.draws.append(d)
            self.inverse.append(inv.astype(np.int64))
            rows.append(np.full(len(uniq), d.row))
            frames.append(uniq)
            crops.append(np.tile([d.crop_x, d.crop_y], (len(uniq), 1)))
            sizes.append(np.tile([d.width, d.height], (len(uniq), 1)))
            ptr.append(ptr[-1] + len(uniq))
        self.slot_ptr = np.asarray(ptr, np.int64)
        self.row, self.frame = np.concatenate(rows), np.concatenate(frames)
        self.crop, self.size = np.concatenate(crops).astype(np.int32), np.concatenate(sizes).astype(np.float32)
        self.batch = frames_per_batch
        self.padded = -(-len(self.row) // frames_per_batch) * frames_per_batch


class FrameSource:
    """Per-sample callback of `eval_frames_graph`: stream entry n (repeating every pass) -> its JPEG
    (one read at the table's frame offset), crop, stream index and resize size."""

    def __init__(self, table: ShardTable, stream: FrameStream, resize: bool):
        from dali_pipelines.sources import SampleSource

        self.base = SampleSource(table, stream.batch, FRAME_INPUTS if resize else FRAME_INPUTS[:-1])
        self.names, self.reader, self.stream, self.table = self.base.names, self.base.reader, stream, table

    def __call__(self, sample_info):
        k = self.base.sample_number(sample_info) % self.stream.padded
        k = min(k, len(self.stream.row) - 1)  # the tail of the last batch repeats the last frame
        row = int(self.stream.row[k])
        c = self.table.cut(row, int(self.stream.frame[k]), 1)  # exactly that frame's JPEG
        return in_order(self.names, encoded=np.frombuffer(self.reader.read(row, c.begin, c.end), np.uint8),
                        crop=self.stream.crop[k], k=np.array(k, np.int64), size=self.stream.size[k])


@pipeline_def
def eval_frames_graph(source, *, device: str, crop: int, py_workers: int, prefetch: int,
                      decode_device: str = "gpu"):
    """One evaluation frame per sample: image decoder -> the clips' resize and crop (`graphs.augment`
    on a one-frame sequence, as the video evaluation's). Outputs (`FRAME_OUTPUTS`): clips (C, 1,
    crop, crop) uint8, k () int64; the loader assembles and standardizes the clips."""
    x = source_node(source, py_workers, prefetch)
    backend = "mixed" if device == "gpu" and decode_device == "gpu" else "cpu"
    img = fn.decoders.image(x["encoded"], device=backend, output_type=types.RGB)
    img = img.gpu() if device == "gpu" and backend == "cpu" else img
    frames = fn.expand_dims(img, axes=[0], new_axis_names="F")  # (1, H, W, C)
    clips = augment(frames, crop=crop, crop_xy=x["crop"], size=x.get("size"))
    return in_order(FRAME_OUTPUTS, clips=clips, k=x["k"])


def assemble_clips(stream: FrameStream, slot: int, frames: "torch.Tensor", num_clips: int,
                   clip_len: int) -> "torch.Tensor":
    """A slot's (N, C, T, H, W) clips from its distinct frames (U, C, H, W) (any dtype)."""
    import torch

    x = frames[torch.from_numpy(stream.inverse[slot]).to(frames.device)]  # (N*T, C, H, W)
    return x.reshape(num_clips, clip_len, *x.shape[1:]).transpose(1, 2)  # (N, C, T, H, W)
