"""The sample streams, as pure functions of (seed, epoch, position): no state, so resuming is exact.

DALI 2.4 cannot checkpoint a pipeline that contains `fn.decoders.video` (docs/DESIGN.md), so everything
random is drawn here, in Python, and fed to the graph through `fn.external_source`. A loader's whole
state is then the number of batches it has consumed.

Training stream. Epoch e visits the videos in the order `default_rng([seed, e]).permutation(V)`
(further permutations from the same generator are appended when `epoch_clips > V`). Global position
i of the epoch goes to rank `i % world_size`, and its window start, crop and flip come from
`default_rng([seed, e, i])`. Each global batch is one contiguous run of `batch_size * world_size`
positions, so the clips a step sees do not depend on how it is split across ranks.

Worked example, 2 ranks, batch 2 per rank: global batch 0 = positions 0..3; rank 0 reads positions
0 and 2, rank 1 reads 1 and 3; batch 1 = positions 4..7 (rank 0: 4, 6).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from sharding.reader import ShardTable


def clip_span(clip_len: int, stride: int) -> int:
    """Frames one clip covers: `(clip_len - 1) * stride + 1` (16 x stride 2 -> 31)."""
    return (clip_len - 1) * stride + 1


def resized_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Frame size after resizing the short side to `short_side` (long side rounded half up).

    The graph resizes to exactly this size, so crop positions drawn from it are exact pixels.

    >>> resized_size(172, 128, 112)   # 172 * 112 / 128 = 150.5 -> 151
    (151, 112)
    >>> resized_size(128, 170, None)  # None: as stored
    (128, 170)
    """
    if short_side is None:
        return int(width), int(height)
    if width <= height:
        return short_side, int(math.floor(height * short_side / width + 0.5))
    return int(math.floor(width * short_side / height + 0.5)), short_side


def _frame_sizes(table: ShardTable, rows: np.ndarray, resize_short: int | None, crop: int):
    """(width, height) per row after the optional resize; fails if the crop cannot fit."""
    cols = table.columns
    sizes = np.array([resized_size(w, h, resize_short)
                      for w, h in zip(cols["width"][rows], cols["height"][rows])], dtype=np.int64)
    sizes = sizes.reshape(-1, 2)
    small = np.flatnonzero(sizes.min(axis=1) < crop)
    if len(small):
        r = rows[small[0]]
        raise ValueError(f"sample {cols['keys'][r]} is {cols['width'][r]}x{cols['height'][r]} "
                         f"(resize_short={resize_short}): smaller than the {crop}-pixel crop; lower "
                         "`crop` or rebuild the shards with a larger --short-side")
    return sizes


class TrainDraw(NamedTuple):
    """One training sample: which stored sample to decode and how to augment it."""

    row: int  # row of the shard table: the stored sample (a whole video; a segment with --container webm/mp4)
    video: int  # video index in the table's grouping
    label: int
    start: int  # first frame of the window within the stored sample
    crop_x: int  # top-left pixel of the crop in the (resized) frame
    crop_y: int
    flip: bool
    width: int  # frame size after the optional resize (the graph resizes to exactly this)
    height: int


class EpochStream:
    """The epoch order and rank split shared by the video and image training samplers.

    Epoch e visits the V videos in the order `default_rng([seed, e]).permutation(V)`, with further
    permutations appended when `epoch_clips > V`; global position i goes to rank `i % world_size`.

    Args:
        num_videos: V.
        batch_size: clips per rank and step.
        rank, world_size: this rank among all (global ranks).
        seed: the stream's seed.
        epoch_clips: clips per epoch over all ranks (None = V). Steps per epoch =
            `epoch_clips // (batch_size * world_size)`; the remainder is skipped so every batch is
            full (e.g. 10 videos, 2 ranks x 2: 2 steps, positions 8 and 9 unused).
    """

    def __init__(self, num_videos: int, *, batch_size: int, rank: int, world_size: int, seed: int,
                 epoch_clips: int | None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.num_videos, self.batch_size, self.rank, self.world_size = num_videos, batch_size, rank, world_size
        self.seed = seed
        self.epoch_clips = num_videos if epoch_clips is None else epoch_clips
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = self.epoch_clips // self.global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"epoch_clips={self.epoch_clips} is less than one global batch "
                             f"({batch_size} x {world_size} ranks); lower batch_size")
        self._order_cache: tuple[int, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Video index at each global position of `epoch` (length `epoch_clips`)."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            reps = -(-self.epoch_clips // self.num_videos)
            order = np.concatenate([rng.permutation(self.num_videos) for _ in range(reps)])
            self._order_cache = (epoch, order[: self.epoch_clips])
        return self._order_cache[1]

    def locate(self, n: int) -> tuple[int, int]:
        """(epoch, global position) of this rank's n-th sample since the stream began.

        Example: 2 ranks x batch 2 with 3 steps per epoch, rank 1: samples 0, 1, 2 -> positions
        1, 3, 5 of epoch 0; sample 6 -> position 1 of epoch 1.
        """
        per_rank_epoch = self.steps_per_epoch * self.batch_size
        epoch, j = divmod(int(n), per_rank_epoch)
        return epoch, j * self.world_size + self.rank


class TrainSampler:
    """Maps a rank's sample number to a `TrainDraw`; see the module docstring for the stream.

    Args:
        table: the training shard table.
        batch_size: clips per rank and step.
        rank, world_size: this rank among all (global ranks).
        seed: the stream's seed.
        clip_len, stride: frames per clip and the step between them.
        crop: side of the square crop.
        resize_short: the in-graph resize of the short side (None = as stored).
        flip: whether to flip with p=0.5 (False: never).
        epoch_clips: clips per epoch over all ranks (None = number of videos; `EpochStream`).
    """

    def __init__(self, table: ShardTable, *, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, clip_len: int = 16, stride: int = 1, crop: int = 112,
                 resize_short: int | None = None, flip: bool = True, epoch_clips: int | None = None):
        self.span = clip_span(clip_len, stride)
        segmented = len(table.video_ptr) > 1 and int(np.diff(table.video_ptr).max()) > 1
        if self.span > table.clip_span and segmented:
            # Segments overlap by clip_span - 1 frames; a longer window could cross a segment's end.
            # (Whole videos, keyframe-indexed or not, serve any span.)
            raise ValueError(f"a clip of {clip_len} frames with stride {stride} spans {self.span} "
                             f"frames but {table.root} was built for clip_span {table.clip_span}; "
                             f"rebuild the shards with --clip-span {self.span} (or more)")
        self.table = table
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.flip = seed, flip
        self.crop, self.resize_short = crop, resize_short
        self.clip_len, self.stride = clip_len, stride
        cols = table.columns
        first_rows = table.video_first_rows()
        self.num_videos = table.num_videos
        self.video_frames = cols["video_num_frames"][first_rows]
        self.video_labels = cols["labels"][first_rows]
        # Owned starts as absolute frame indices, in CSR order (see ShardTable.video_rows).
        self._own_lo = cols["first_frame"][table.video_rows] + cols["own_start"][table.video_rows]
        self._sizes = _frame_sizes(table, first_rows, resize_short, crop)
        self.stream = EpochStream(self.num_videos, batch_size=batch_size, rank=rank,
                                  world_size=world_size, seed=seed, epoch_clips=epoch_clips)

    # The stream (epoch order, rank split): see EpochStream.
    epoch_clips = property(lambda self: self.stream.epoch_clips)
    global_batch = property(lambda self: self.stream.global_batch)
    steps_per_epoch = property(lambda self: self.stream.steps_per_epoch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Video index at each global position of `epoch` (`EpochStream.epoch_order`)."""
        return self.stream.epoch_order(epoch)

    def draw_at(self, epoch: int, position: int) -> TrainDraw:
        """The sample at a global position of an epoch (identical on every rank)."""
        video = int(self.epoch_order(epoch)[position])
        rng = np.random.default_rng([self.seed, epoch, position])
        frames = int(self.video_frames[video])
        # Uniform over all W' = F - span + 1 starts of this clip length (1 for a short video).
        t = int(rng.integers(max(frames - self.span + 1, 1)))
        # Segmented builds: the segment owning start t for the build's span also holds every later
        # start of a shorter span (FORMAT.md); starts past the build's last one live in the last
        # segment. A whole-video build (the default ivf layout) has one row per video, found here too.
        t_own = min(t, max(frames - self.table.clip_span + 1, 1) - 1)
        lo, hi = self.table.video_ptr[video], self.table.video_ptr[video + 1]
        seg = lo + int(np.searchsorted(self._own_lo[lo:hi], t_own, side="right")) - 1
        row = int(self.table.video_rows[seg])
        start = t - int(self.table.columns["first_frame"][row])
        width, height = (int(v) for v in self._sizes[video])
        crop_x = int(rng.integers(width - self.crop + 1))
        crop_y = int(rng.integers(height - self.crop + 1))
        flip = bool(rng.random() < 0.5) if self.flip else False
        return TrainDraw(row, video, int(self.video_labels[video]), start, crop_x, crop_y, flip,
                         width, height)

    def draw(self, n: int) -> TrainDraw:
        """This rank's n-th sample since the stream began (n counts across epochs)."""
        return self.draw_at(*self.stream.locate(n))


class EvalDraw(NamedTuple):
    """One evaluation sample: a whole video and the frames of its N clips."""

    row: int
    video: int  # video index, -1 for a padding entry (the caller drops it)
    label: int
    frame_idx: np.ndarray  # (N * T,) int32 frame indices into the decoded video, clamped to F - 1
    crop_x: int
    crop_y: int
    width: int
    height: int


class EvalSampler:
    """Every video exactly once over all ranks, in equal-length per-rank streams.

    Rank r takes videos r, r + W, r + 2W, ... Every rank runs `num_batches =
    ceil(ceil(V / W) / batch_size)` batches; the entries past a rank's last video are padding
    (video = -1, decoding the shortest video so they cost little).

    Worked example, V = 7 videos, 2 ranks, batch 3: rank 0 gets 0, 2, 4, 6; rank 1 gets 1, 3, 5;
    both run 2 batches: rank 0 = [0, 2, 4], [6, -1, -1]; rank 1 = [1, 3, 5], [-1, -1, -1].

    The stream repeats with period `num_batches * batch_size`, so one pipeline serves every
    evaluation pass as long as each pass consumes exactly `num_batches` batches.
    """

    def __init__(self, table: ShardTable, *, batch_size: int, rank: int = 0, world_size: int = 1,
                 num_clips: int = 25, clip_len: int = 16, stride: int = 1,
                 clip_positions: str = "uniform", seed: int = 0, crop: int = 112,
                 resize_short: int | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if clip_positions not in ("uniform", "random"):
            raise ValueError(f"clip_positions must be 'uniform' or 'random', not {clip_positions!r}")
        self.table = table
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.num_clips, self.clip_len, self.stride = num_clips, clip_len, stride
        self.span = clip_span(clip_len, stride)
        self.clip_positions, self.seed, self.crop = clip_positions, seed, crop
        self.resize_short = resize_short
        rows = table.video_first_rows()
        self.rows = rows
        self.num_videos = table.num_videos
        self.frames = table.columns["num_frames"][rows]
        self.labels = table.columns["labels"][rows]
        self._sizes = _frame_sizes(table, rows, resize_short, crop)
        per_rank = -(-self.num_videos // world_size)
        self.num_batches = -(-per_rank // batch_size)
        self.samples_per_pass = self.num_batches * batch_size
        self._filler = int(np.argmin(self.frames))

    def clip_starts(self, video: int) -> np.ndarray:
        """First frame of each of the N clips of a video.

        'uniform': `floor(linspace(0, F - span, N))`, first clip at frame 0, last ending on the last
        frame; 'random': N sorted draws from `default_rng([seed, video])` over the F - span + 1
        starts. A video shorter than the span gets N starts at 0 (edge-padded).

        Example: F = 100, span 16, N = 3 -> uniform starts [0, 42, 84]; F = 10 -> [0, 0, 0].
        """
        last = max(int(self.frames[video]) - self.span, 0)
        if self.clip_positions == "uniform":
            return np.floor(np.linspace(0, last, self.num_clips)).astype(np.int64)
        rng = np.random.default_rng([self.seed, video])
        return np.sort(rng.integers(0, last + 1, self.num_clips))

    def frame_indices(self, video: int) -> np.ndarray:
        """(N * T,) int32 decoded-frame indices of the N clips, clamped to F - 1 (edge padding)."""
        starts = self.clip_starts(video)
        idx = starts[:, None] + np.arange(self.clip_len)[None, :] * self.stride  # (N, T)
        return np.minimum(idx, int(self.frames[video]) - 1).reshape(-1).astype(np.int32)

    def video_at(self, n: int) -> int:
        """Video index of this rank's n-th sample (n counts across passes), -1 for padding."""
        j = int(n) % self.samples_per_pass
        video = j * self.world_size + self.rank
        return video if video < self.num_videos else -1

    def draw(self, n: int) -> EvalDraw:
        """This rank's n-th evaluation sample."""
        video = self.video_at(n)
        v = self._filler if video < 0 else video
        width, height = (int(s) for s in self._sizes[v])
        return EvalDraw(int(self.rows[v]), video, int(self.labels[v]), self.frame_indices(v),
                        (width - self.crop) // 2, (height - self.crop) // 2, width, height)
