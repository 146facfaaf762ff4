"""Still images as pseudo-videos (the paper's SUN397 pretraining): a camera pan/zoom over one image.

For each sample the sampler draws two square windows inside the stored image, a start and an end
(side uniform in [min_side, min(W, H)], then the top-left corner uniform over the positions where the
window fits). Frame t of the T-frame clip shows the window linearly interpolated between them,
`w_t = w_start + t / (T - 1) * (w_end - w_start)` (sub-pixel: corners are floats), resized to
crop x crop; then the video graphs' flip (graphs.augment) and the loader's standardization follow.

Worked example, T = 3, start window x 0..120 (side 120), end window x 80..200: frame 1 shows
x 40..160. A start equal to the end is a still zoom-in crop; a larger end than start zooms out.

The paper's code (auxiliary_stillimages.py) differs in two ways, both on purpose: it draws the
corner first and then a side that fits from that corner (so windows near the image's right/bottom
edge are small), and it truncates the interpolated windows to whole pixels (a visible jitter at
slow pans). Here sides are uniform, then positions, and windows move smoothly.

Everything random is drawn in Python as a pure function of (seed, epoch, position), like the video
sampler (sampler.py), so a loader restores to the exact batch. The per-frame windows reach DALI as
a per-frame argument (`fn.per_frame`) of one `fn.warp_affine` over the T-frame sequence: no Python
loop over frames.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from dali_pipelines.graphs import TRAIN_OUTPUTS, augment, in_order, source_node
from dali_pipelines.sampler import EpochStream
from sharding.reader import ShardTable

# What `sources.ImageTrainSource` returns per sample, in order (the graph's outputs are
# graphs.TRAIN_OUTPUTS, so the training loader treats both graphs alike).
IMAGE_INPUTS = ("encoded", "label", "matrix", "flip", "row", "start", "crop", "size")


def is_image_set(info: dict) -> bool:
    """True for a shard set built with `sharding.build --layout images` (FORMAT.md)."""
    return (info.get("encoding") or {}).get("media") == "image"


class ImageDraw(NamedTuple):
    """One pseudo-video: which image, its start and end windows, and the flip."""

    row: int
    video: int  # image index in the table's grouping
    label: int
    start: tuple[int, int, int]  # (x, y, side) of the first frame's window, stored-image pixels
    end: tuple[int, int, int]  # (x, y, side) of the last frame's window
    flip: bool
    width: int  # stored image size
    height: int


def window_path(start, end, num_frames: int) -> np.ndarray:
    """Per-frame windows of the linear pan/zoom from `start` to `end`.

    Args:
        start, end: (x, y, side) windows.
        num_frames: T.

    Returns:
        (T, 3) float64: (x, y, side) of each frame's window; frame t covers x in [x, x + side) and
        y in [y, y + side) of the stored image.

    >>> window_path((0, 0, 120), (80, 10, 120), 3).tolist()
    [[0.0, 0.0, 120.0], [40.0, 5.0, 120.0], [80.0, 10.0, 120.0]]
    """
    a = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    s, e = np.asarray(start, np.float64), np.asarray(end, np.float64)
    return s[None, :] + a[:, None] * (e - s)[None, :]


def prescale(width: int, height: int, windows: np.ndarray, size: int,
             max_ratio: float = 2.0) -> tuple[int, int]:
    """The size to resize a width x height image to (antialiased) before the pan/zoom warps, so no
    frame shrinks its window by more than `max_ratio`: a bilinear warp samples 2 x 2 pixels per
    output pixel and aliases fine texture beyond that.

    >>> prescale(512, 384, np.array([[0.0, 0.0, 384.0], [10.0, 0.0, 200.0]]), 112)
    (299, 224)
    >>> prescale(512, 384, np.array([[0.0, 0.0, 150.0]]), 112)  # 150 / 112 < 2: kept
    (512, 384)
    """
    f = min(1.0, max_ratio * size / float(windows[:, 2].max()))
    return max(1, int(round(width * f))), max(1, int(round(height * f)))


def window_matrices(windows: np.ndarray, size: int) -> np.ndarray:
    """(T, 2, 3) float32 destination-to-source affine maps for `fn.warp_affine`: output pixel
    (u, v) of a size x size frame samples the image at (x + u * side / size, y + v * side / size),
    where both sides are continuous coordinates (pixel centres at +0.5), so the output's edges fall
    exactly on the window's edges.

    >>> window_matrices(np.array([[10.0, 20.0, 64.0]]), 32).tolist()
    [[[2.0, 0.0, 10.0], [0.0, 2.0, 20.0]]]
    """
    k = windows[:, 2] / size
    m = np.zeros((len(windows), 2, 3), np.float32)
    m[:, 0, 0] = m[:, 1, 1] = k
    m[:, 0, 2], m[:, 1, 2] = windows[:, 0], windows[:, 1]
    return m


def prescaled_matrices(width: int, height: int, windows: np.ndarray, size: int):
    """`window_matrices` for the image after its `prescale` resize, and that size.

    The resize scales continuous coordinates by new / old size on each axis (edges map to edges),
    so each matrix row is scaled by it.
    """
    new_w, new_h = prescale(width, height, windows, size)
    m = window_matrices(windows, size)
    m[:, 0, :] *= new_w / width
    m[:, 1, :] *= new_h / height
    return m, (new_w, new_h)


class ImageTrainSampler:
    """Maps a rank's sample number to an `ImageDraw`.

    The stream is the video sampler's (`sampler.EpochStream`: same epoch order, same rank split),
    one "video" per image; only the per-sample draw differs.

    Args:
        table: an image shard table (`is_image_set(table.info)`).
        batch_size, rank, world_size, seed, flip, epoch_clips: as `sampler.TrainSampler`.
        clip_len: frames per pseudo-video (T).
        crop: output frame side.
        min_side: smallest window side (None = crop). The paper: 112.
    """

    def __init__(self, table: ShardTable, *, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, clip_len: int = 16, crop: int = 112, min_side: int | None = None,
                 flip: bool = True, epoch_clips: int | None = None):
        self.stream = EpochStream(table.num_videos, batch_size=batch_size, rank=rank,
                                  world_size=world_size, seed=seed, epoch_clips=epoch_clips)
        self.table = table
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.flip, self.crop, self.clip_len = seed, flip, crop, clip_len
        self.min_side = crop if min_side is None else min_side
        first_rows = table.video_first_rows()
        self.rows = first_rows
        self.num_videos = table.num_videos
        self.video_labels = table.columns["labels"][first_rows]
        self._sizes = np.stack([table.columns["width"][first_rows], table.columns["height"][first_rows]], 1)
        small = np.flatnonzero(self._sizes.min(axis=1) < self.min_side)
        if len(small):
            r = first_rows[small[0]]
            raise ValueError(f"image {table.columns['keys'][r]} is {self._sizes[small[0]][0]}x"
                             f"{self._sizes[small[0]][1]}: smaller than the {self.min_side}-pixel "
                             "smallest window; lower data.train.pan_min_side or rebuild with a larger "
                             "--image-min-side")

    def _window(self, rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int]:
        side = int(rng.integers(self.min_side, min(width, height) + 1))
        return int(rng.integers(width - side + 1)), int(rng.integers(height - side + 1)), side

    def draw_at(self, epoch: int, position: int) -> ImageDraw:
        """The sample at a global position of an epoch (identical on every rank)."""
        video = int(self.stream.epoch_order(epoch)[position])
        rng = np.random.default_rng([self.seed, epoch, position])
        width, height = (int(v) for v in self._sizes[video])
        start = self._window(rng, width, height)
        end = self._window(rng, width, height)
        flip = bool(rng.random() < 0.5) if self.flip else False
        return ImageDraw(int(self.rows[video]), video, int(self.video_labels[video]), start, end, flip,
                         width, height)

    def draw(self, n: int) -> ImageDraw:
        """This rank's n-th sample since the stream began (n counts across epochs)."""
        return self.draw_at(*self.stream.locate(n))


def pan_zoom(encoded, matrix, *, device: str, clip_len: int, size: int, image_size=None,
             decode_device: str = "gpu"):
    """Decode one image per sample and render its T-frame pan/zoom.

    Args:
        encoded: DataNode (nbytes,) uint8 encoded images.
        matrix: DataNode (T, 2, 3) float32 per sample: each frame's destination-to-source affine
            map (`window_matrices`), a per-frame argument of one `fn.warp_affine`.
        device: "cpu" or "gpu" (later ops on the GPU).
        decode_device: with device "gpu": "gpu" decodes with the mixed (nvJPEG) decoder, "cpu" on
            the CPU threads and copies the image to the GPU. Ignored with device "cpu".
        clip_len: T.
        size: output side.
        image_size: None, or DataNode (2,) float32 [width, height] per sample: resize the image
            to this first, antialiased (`prescale`; `matrix` is then in the resized image's
            coordinates).

    Returns:
        DataNode (T, size, size, C) uint8, layout "FHWC": bilinear samples of the windows.

    `fn.resize` takes no per-frame ROI in DALI 2.4 (it asserts on a (T, 2) roi_start), so the
    windows are warps. A bilinear warp does not antialias: a window more than about twice `size`
    (zooming out of a 512-pixel image to 112) would alias fine textures, which is what the
    per-sample antialiased resize to `image_size` prevents (the training source always passes it).
    """
    on_gpu = device == "gpu" and decode_device == "gpu"
    image = fn.decoders.image(encoded, device="mixed" if on_gpu else "cpu", output_type=types.RGB)  # (H, W, C)
    if device == "gpu" and not on_gpu:
        image = image.gpu()
    if image_size is not None:
        image = fn.resize(image, resize_x=image_size[0], resize_y=image_size[1], antialias=True)
    seq = fn.expand_dims(image, axes=[0], new_axis_names="F")  # (H,W,C) -> (1,H,W,C)
    seq = fn.sequence_rearrange(seq, new_order=[0] * clip_len)  # (1,H,W,C) -> (T,H,W,C)
    return fn.warp_affine(seq, matrix=fn.per_frame(matrix), size=[size, size], inverse_map=True,
                          interp_type=types.INTERP_LINEAR)  # (T, size, size, C); edges clamp


@pipeline_def
def image_train_graph(source, *, device: str, clip_len: int, crop: int,
                      py_workers: int, prefetch: int, decode_device: str = "gpu"):
    """Pseudo-video training clips from still images.

    Args:
        source: a `sources.ImageTrainSource` (returns `IMAGE_INPUTS`).
        device, decode_device: as `graphs.train_graph` (`pan_zoom`).

    Outputs: `graphs.TRAIN_OUTPUTS`, as `graphs.train_graph`: clips (C, T, crop, crop) uint8,
    label () int32, row () int64, start () int32, crop (2,) int32, flip () int32.
    """
    x = source_node(source, py_workers, prefetch)
    frames = pan_zoom(x["encoded"], x["matrix"], device=device, clip_len=clip_len, size=crop,
                      image_size=x["size"], decode_device=decode_device)  # (T, crop, crop, C)
    # The frames are already crop x crop: augment's crop at [0, 0] keeps them whole.
    clips = augment(frames, crop=crop, crop_xy=[0, 0], flip=x["flip"])  # (C, T, crop, crop) uint8
    return in_order(TRAIN_OUTPUTS, clips=clips, **x)
