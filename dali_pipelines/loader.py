"""The one place the data loaders are built: config section + (rank, world_size, local_rank, device).

Usage in the trainer (order matters with the forked source workers, see sources.py):

    train_loader = make_train_loader(cfg.data.train, rank, world_size, local_rank, device)
    eval_loader = make_eval_loader(cfg.data.eval, rank, world_size, local_rank, device)
    # ... only now touch CUDA: dist.init_process_group("nccl"), model.to(device), ...
    train_loader.load_state_dict(ckpt["loader_state"])       # before the first iteration
    for epoch in range(train_loader.epoch, epochs):
        for batch in train_loader:                           # the rest of the current epoch
            loss = step(batch["clips"], batch["labels"])     # (B, C, T, H, W), (B,)
        for batch in eval_loader:                            # every video once over all ranks
            keep = batch["video"] >= 0                       # drop the padding entries
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from dali_pipelines.config import EvalDataConfig, TrainDataConfig
from dali_pipelines.decode import (FRAME_OUTPUTS, FRAME_TRAIN_OUTPUTS, FrameSource, FrameStream, TrainFrameBatches,
                                   assemble_clips, eval_frames_graph, frames_to_clips,
                                   train_frames_graph)
from dali_pipelines.graphs import EVAL_OUTPUTS, TRAIN_OUTPUTS, eval_graph, train_graph
from dali_pipelines.images import ImageTrainSampler, image_train_graph, is_image_set
from dali_pipelines.sampler import EvalSampler, TrainSampler
from dali_pipelines.sources import EvalSource, ImageTrainSource, TrainSource
from dali_pipelines.standardize import standardize
from sharding.formats import JpegFrames, format_of
from sharding.reader import ShardError, load_shards


def resolve_device(cfg_device: str, device: torch.device | str) -> str:
    """'cpu' or 'gpu' for the graphs from the config's choice and the rank's torch device.

    'auto' follows the trainer's device instead of calling torch.cuda.is_available(): that call
    can initialise CUDA, after which forking the source workers is unsafe.

    >>> resolve_device("auto", "cuda:1"), resolve_device("auto", "cpu")
    ('gpu', 'cpu')
    """
    on_cuda = torch.device(device).type == "cuda"
    if cfg_device == "auto":
        return "gpu" if on_cuda else "cpu"
    if cfg_device == "gpu" and not on_cuda:
        raise ValueError("data device 'gpu' needs a CUDA torch device for the batches; got "
                         f"{device!r} (set device: auto or cpu)")
    return cfg_device


def resolve_decode_device(cfg_decode_device: str, graph_device: str) -> str:
    """Where the graph decodes, 'cpu' or 'gpu', from the config's `decode_device` and the graph's
    device (`resolve_device`).

    The `auto` rule: decode where the graph runs, so NVDEC on a GPU graph. The CPU decoder can
    win on small frames (DALI issue 5888; torchcodec PR 344: 9x at 480x270 for sparse seeks), but
    no figure of ours from a GPU node says so yet: `python -m benchmarks.gpu_check` measures both,
    and this rule changes only on its figures.

    >>> resolve_decode_device("auto", "gpu"), resolve_decode_device("cpu", "gpu")
    ('gpu', 'cpu')
    >>> resolve_decode_device("auto", "cpu")
    'cpu'
    """
    if graph_device == "cpu":
        if cfg_decode_device == "gpu":
            raise ValueError("decode_device 'gpu' needs the graph on the GPU; the data device "
                             "resolved to 'cpu' (set decode_device: auto or cpu, or run on CUDA)")
        return "cpu"
    return "gpu" if cfg_decode_device == "auto" else cfg_decode_device


def _pipeline_kwargs(cfg, graph_device: str, local_rank: int) -> dict:
    return dict(batch_size=cfg.batch_size, num_threads=cfg.num_threads,
                device_id=local_rank if graph_device == "gpu" else None,
                prefetch_queue_depth=cfg.prefetch, py_num_workers=max(cfg.py_workers, 1),
                py_start_method="fork", device=graph_device, py_workers=cfg.py_workers,
                prefetch=cfg.prefetch,
                decode_device=resolve_decode_device(cfg.decode_device, graph_device))


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One output of DALI's iterator on the rank's device, safe to keep after DALI's next run.

    The iterator's outputs are zero-copy views of DALI's buffers (its dynamic executor). A view
    keeps its buffer alive, so on the CPU it is returned as is. A host view bound for CUDA is
    first copied into torch's own pinned memory: an asynchronous copy straight from the view
    would still be reading it after the view is dropped, and DALI could refill the buffer first
    (wrong labels); torch's pinned allocator keeps its block until the copy has run, so the
    copy can stay `non_blocking` and overlap the GPU's work. A CUDA output stays where it is.

    Args:
        t: a tensor from `DALIGenericIterator`.
        device: the rank's torch device.
    """
    if device.type != "cuda" or t.is_cuda:
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class _Loader:
    """Shared mechanics: lazy build at the first iteration, conversion to torch on `device`,
    the standardization (`standardize.py`)."""

    names: tuple[str, ...]  # the graph's declared outputs (graphs.TRAIN_OUTPUTS / EVAL_OUTPUTS)

    def __init__(self, pipe, source, device: torch.device | str, py_workers: int):
        self.pipe, self.source = pipe, source
        self.device = torch.device(device)
        self._iter = None
        self._held = None  # (DALI's outputs of the last batch, CUDA event after their last read)
        if py_workers > 0:
            # Forks the workers now, while CUDA is (should be) still untouched.
            pipe.start_py_workers()

    def _raw_next(self) -> dict[str, torch.Tensor]:
        """DALI's next batch as the iterator gives it; a decoder's error names the samples."""
        try:
            if self._iter is None:
                # Building runs the first batches (prefetch), so the offset must be final by now.
                self._iter = DALIGenericIterator(self.pipe, list(self.names), size=-1, auto_reset=False)
            return next(self._iter)[0]
        except RuntimeError as e:
            if "decoders" not in str(e):
                raise
            raise ShardError(self._decode_failure(str(e))) from e

    def _next(self) -> dict[str, torch.Tensor]:
        batch = self._raw_next()
        out = {k: to_device(v, self.device) for k, v in batch.items()}
        if "clips" in out:
            out["clips"] = standardize(out["clips"], self.cfg.standardization)
        else:  # decode.train_frames_graph: B*T decoded crops
            out = self._frame_batch(out.pop("decoded"))
        if self.device.type == "cuda":
            # The GPU outputs are views of DALI's buffers, read by kernels queued on torch's stream
            # (standardize); DALI may refill a buffer once its view is gone. Keep the views until
            # those reads have run: by the next batch they have, so the wait costs nothing.
            if self._held is not None:
                self._held[1].synchronize()
            done = torch.cuda.Event()
            done.record()
            self._held = (batch, done)
        return out

    def _frame_batch(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch of a graph that returns decoded frames (`TrainLoader` on JPEG frames)."""
        raise NotImplementedError

    def _in_flight(self) -> list[tuple[int, int | None, int | None]]:
        """(row, window start, span) of every sample the pipeline may be decoding now; start None:
        the whole member. Subclasses that can say it override this."""
        return []

    def _decode_failure(self, dali_error: str) -> str:
        """A DALI decode error, with the shard, sample keys and byte ranges it came from: the
        samples in flight whose bytes PyAV cannot decode either, else all of them."""
        from sharding.verify import decode_error  # PyAV: only on this error path

        reader, keys = self.source.reader, self.table.columns["keys"]
        named, suspects = {}, {}
        for row, start, span in dict.fromkeys(self._in_flight()):
            tar, begin, end = reader.byte_range(row, start, span)
            what = f"{keys[row]} ({tar} bytes [{begin}, {end}))"
            if what in named or what in suspects:
                continue  # two windows of one video can share a cut
            data = reader.read(row) if start is None else reader.read_window(row, start, span)[0]
            why = decode_error(data)
            (named if why else suspects)[what] = why
        first = next((ln.strip() for ln in dali_error.splitlines() if "failed" in ln.lower()), "")
        fix = (f"check the set with `python -m sharding.verify {self.table.root}` and rebuild the shard "
               "(`python -m sharding.build` with the build's arguments and --verify-existing)")
        if named:
            return f"a sample does not decode ({first}): {'; '.join(f'{k}: {v}' for k, v in named.items())}; {fix}"
        return (f"decoding failed in DALI ({first}); the samples in flight were: "
                f"{'; '.join(suspects) or 'unknown'}; {fix}")

    @property
    def started(self) -> bool:
        return self._iter is not None


class TrainLoader(_Loader):
    """Training batches, one epoch per `for` loop, resumable to the exact batch.

    Yields dicts of tensors on the rank's device:
        clips (B, C, T, H, W) float32, labels (B,) int64, index (B,) int64 = shard-table rows (name
        a sample with `loader.keys(index)`), and for debugging start (B,) (first frame of the window
        in the stored sample: the whole video, or with `--container webm`/mp4 builds its segment),
        crop_x, crop_y (B,) (top-left of the crop) and flip (B,) bool.

    `for batch in loader` yields the batches left in the current epoch: 10 steps per epoch,
    restored at position 23 -> the first loop yields 7 batches (epoch 2), then 10 per loop.
    """

    names = TRAIN_OUTPUTS

    def __init__(self, cfg: TrainDataConfig, rank: int, world_size: int, local_rank: int,
                 device: torch.device | str):
        self.cfg = cfg
        self.table = load_shards(cfg.shards, split="train", verify=cfg.verify)
        graph_device = resolve_device(cfg.device, device)
        if is_image_set(self.table.info):
            # still images (sharding.build --layout images): camera-motion pseudo-videos; stride
            # and resize_short do not apply (dali_pipelines/images.py)
            self.sampler = ImageTrainSampler(
                self.table, batch_size=cfg.batch_size, rank=rank, world_size=world_size, seed=cfg.seed,
                clip_len=cfg.clip_len, crop=cfg.crop, min_side=cfg.pan_min_side, flip=cfg.flip,
                epoch_clips=cfg.epoch_clips)
            source = ImageTrainSource(self.table, self.sampler)
            pipe = image_train_graph(source, clip_len=cfg.clip_len, crop=cfg.crop,
                                                                          **_pipeline_kwargs(cfg, graph_device, local_rank))
        else:
            self.sampler = TrainSampler(
                self.table, batch_size=cfg.batch_size, rank=rank, world_size=world_size, seed=cfg.seed,
                clip_len=cfg.clip_len, stride=cfg.stride, crop=cfg.crop, resize_short=cfg.resize_short,
                flip=cfg.flip, epoch_clips=cfg.epoch_clips)
            kwargs = _pipeline_kwargs(cfg, graph_device, local_rank)
            if isinstance(self.table.format, JpegFrames) and cfg.resize_short is None:
                # a batch of B*T frames, one decoder call (decode.train_frames_graph)
                source = TrainFrameBatches(self.table, self.sampler, cfg.hw_decoder_load)
                self.names = FRAME_TRAIN_OUTPUTS
                pipe = train_frames_graph(source, crop=cfg.crop, **{**kwargs, "batch_size": cfg.batch_size * cfg.clip_len})
            else:
                source = TrainSource(self.table, self.sampler, cfg.hw_decoder_load)
                pipe = train_graph(source, clip_len=cfg.clip_len, stride=cfg.stride, crop=cfg.crop, **kwargs)
        super().__init__(pipe, source, device, cfg.py_workers)
        self.position = 0  # batches consumed since the stream began (all epochs)

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch: `epoch_clips // (batch_size * world_size)`."""
        return self.sampler.stream.steps_per_epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to."""
        return self.position // self.steps_per_epoch

    def _in_flight(self):
        if not isinstance(self.sampler, TrainSampler):
            return []  # still images: DALI names the JPEG decoder's error itself
        bs = self.cfg.batch_size  # batch p holds the rank's samples p*bs .. p*bs + bs - 1
        return [(d.row, d.start, self.sampler.span) for d in map(
            self.sampler.draw, range(self.position * bs, (self.position + self.cfg.prefetch + 1) * bs))]

    def _frame_batch(self, frames):
        """`decode.train_frames_graph`'s B*T decoded crops (B*T, H, W, C) -> the batch: the clips in
        torch, and the clips' numbers drawn again (the batch at `position` holds the rank's samples
        position*B .. position*B + B - 1, as `_in_flight` counts)."""
        B, T = self.cfg.batch_size, self.cfg.clip_len
        draws = [self.sampler.draw(n) for n in range(self.position * B, (self.position + 1) * B)]
        flip = torch.tensor([d.flip for d in draws], dtype=torch.int32)
        numbers = {"label": ([d.label for d in draws], torch.int32), "row": ([d.row for d in draws], torch.int64),
                   "start": ([d.start for d in draws], torch.int32),
                   "crop": ([[d.crop_x, d.crop_y] for d in draws], torch.int32), "flip": (flip, torch.int32)}
        return {"clips": frames_to_clips(frames.view(B, T, *frames.shape[1:]), flip, self.cfg.standardization),
                **{k: torch.as_tensor(v, dtype=t).to(self.device) for k, (v, t) in numbers.items()}}

    def keys(self, index: torch.Tensor) -> list[str]:
        """Sample keys of the table rows in a batch's `index` (for error messages)."""
        return [str(self.table.columns["keys"][int(i)]) for i in index.tolist()]

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue the same stream."""
        return {"position": self.position, "seed": self.cfg.seed,
                "global_batch": self.sampler.stream.global_batch,
                "epoch_clips": self.sampler.stream.epoch_clips}

    def load_state_dict(self, state: dict) -> None:
        """Continue at `state["position"]`; call before the first iteration.

        The stream is defined per global batch, so a different world size with the same global
        batch continues the same stream; a different seed, global batch or epoch size would not,
        and is refused.
        """
        if self.started:
            raise RuntimeError("load_state_dict() must come before the loader's first iteration "
                               "(the pipeline has already prefetched from the old position)")
        mine = self.state_dict()
        for k in ("seed", "global_batch", "epoch_clips"):
            if k in state and state[k] != mine[k]:
                raise ValueError(f"loader state has {k}={state[k]} but this loader has {mine[k]}: "
                                 "the saved stream cannot be continued")
        self.position = int(state["position"])
        self.source.offset = self.position * self.cfg.batch_size

    def __iter__(self):
        if not self.started:
            self.source.offset = self.position * self.cfg.batch_size
        for _ in range(self.steps_per_epoch - self.position % self.steps_per_epoch):
            out = self._next()
            self.position += 1
            yield {"clips": out["clips"], "labels": out["label"].long(), "index": out["row"],
                   "start": out["start"], "crop_x": out["crop"][:, 0], "crop_y": out["crop"][:, 1],
                   "flip": out["flip"].bool()}


class EvalLoader(_Loader):
    """Evaluation batches: each `for` loop is one pass over this rank's share of the videos.

    Yields dicts: clips (B, N, C, T, H, W) float32, labels (B,) int64, video (B,) int64 (video
    index; -1 marks padding, drop it), index (B,) int64 (shard-table rows). Every rank yields
    `len(loader)` batches, so collective ops stay in step; over all ranks every video appears
    exactly once with video >= 0.
    """

    names = EVAL_OUTPUTS

    def __init__(self, cfg: EvalDataConfig, rank: int, world_size: int, local_rank: int,
                 device: torch.device | str):
        self.cfg = cfg
        self.table = load_shards(cfg.shards, split="eval", verify=cfg.verify)
        if is_image_set(self.table.info):
            raise ShardError(f"{cfg.shards}: a still-image shard set (--layout images) cannot be an "
                             "evaluation set; evaluate on videos")
        self.sampler = EvalSampler(
            self.table, batch_size=cfg.batch_size, rank=rank, world_size=world_size,
            num_clips=cfg.num_clips, clip_len=cfg.clip_len, stride=cfg.stride,
            clip_positions=cfg.clip_positions, seed=cfg.seed, crop=cfg.crop,
            resize_short=cfg.resize_short)
        graph_device = resolve_device(cfg.device, device)
        source, pipe = self._graph(cfg, graph_device, local_rank)
        super().__init__(pipe, source, device, cfg.py_workers)
        self._consumed = 0  # batches taken from the pipeline (all passes)

    def _graph(self, cfg: EvalDataConfig, graph_device: str, local_rank: int):
        """(source, pipeline) of a video format: each whole video decoded once, its clips gathered."""
        source = EvalSource(self.table, self.sampler)
        return source, eval_graph(source, num_clips=cfg.num_clips, clip_len=cfg.clip_len, crop=cfg.crop,
                                                                    **_pipeline_kwargs(cfg, graph_device, local_rank))

    def __len__(self) -> int:
        return self.sampler.num_batches

    def _in_flight(self):
        bs, b = self.cfg.batch_size, self._consumed
        return [(self.sampler.draw(n).row, None, None) for n in range(b * bs, (b + self.cfg.prefetch + 1) * bs)]

    @property
    def classes(self) -> list[dict]:
        """The manifest's classes: [{label, name, text}]."""
        return self.table.info["classes"]

    def __iter__(self):
        # Always whole passes: the source's stream repeats every pass, so the batches the pipeline
        # prefetched past the end are the next pass's first ones. A pass left early (break) is
        # run to its end first, so the next pass starts at its first video again.
        for _ in range(-self._consumed % len(self)):
            self._next()
            self._consumed += 1
        for _ in range(len(self)):
            out = self._next()
            self._consumed += 1
            yield {"clips": out["clips"], "labels": out["label"].long(),
                   "video": out["video"].long(), "index": out["row"]}


class JpegFramesEvalLoader(EvalLoader):
    """`EvalLoader` of a jpeg_frames set: the same batches, from a stream of the frames the clips
    need (`decode.FrameStream`), each decoded once by DALI's image decoder; DALI's batches hold
    `batch_size * clip_len` frames, and each video's clips are gathered from its frames here."""

    names = FRAME_OUTPUTS

    def _graph(self, cfg, graph_device, local_rank):
        self.stream = FrameStream(self.sampler, cfg.batch_size * cfg.clip_len)
        source = FrameSource(self.table, self.stream, resize=cfg.resize_short is not None)
        kwargs = {**_pipeline_kwargs(cfg, graph_device, local_rank), "batch_size": self.stream.batch}
        return source, eval_frames_graph(source, crop=cfg.crop, **kwargs)

    def __len__(self) -> int:
        return self.sampler.num_batches

    def _in_flight(self):
        k = self._consumed * self.stream.batch % self.stream.padded
        rows = self.stream.row[k:k + (self.cfg.prefetch + 1) * self.stream.batch]
        return [(int(r), None, None) for r in dict.fromkeys(rows.tolist())]

    def _frames(self):
        """uint8 frames (n, C, H, W) of one DALI batch, in stream order. Frames are
        kept across DALI's next runs (a video's may span batches), so GPU outputs, views of DALI's
        buffers, are copied out of them."""
        out = self._raw_next()
        if self.device.type == "cuda":
            out = {k: v.clone() if v.is_cuda else v for k, v in out.items()}
        self._consumed += 1
        k = out["k"].view(-1).cpu()
        start = (self._consumed - 1) * self.stream.batch % self.stream.padded
        if not torch.equal(k, torch.clamp(torch.arange(start, start + len(k)), max=len(self.stream.row) - 1)):
            raise RuntimeError("evaluation frame stream out of order")  # never: the source is a pure function
        return to_device(out["clips"], self.device)[:, :, 0]

    def __iter__(self):
        per_pass = self.stream.padded // self.stream.batch
        for _ in range(-self._consumed % per_pass):  # finish a pass left early
            self._frames()
        ptr, B, got, bufs = self.stream.slot_ptr, self.cfg.batch_size, 0, []
        for b in range(len(self)):
            need = int(ptr[(b + 1) * B])
            while got < need:
                bufs.append(self._frames())
                got += len(bufs[-1])
            frames = torch.cat(bufs)
            base = got - len(frames)  # stream index of frames[0]
            clips = [assemble_clips(self.stream, slot, frames[int(ptr[slot]) - base:int(ptr[slot + 1]) - base],
                                    self.cfg.num_clips, self.cfg.clip_len) for slot in range(b * B, (b + 1) * B)]
            bufs = [frames[int(ptr[(b + 1) * B]) - base:]]
            draws = self.stream.draws[b * B:(b + 1) * B]
            # a frame's statistics are its own wherever it sits: standardize the assembled uint8 clips
            yield {"clips": standardize(torch.stack(clips), self.cfg.standardization),
                   "labels": torch.tensor([d.label for d in draws], dtype=torch.int64, device=self.device),
                   "video": torch.tensor([d.video for d in draws], dtype=torch.int64, device=self.device),
                   "index": torch.tensor([d.row for d in draws], dtype=torch.int64, device=self.device)}
        for _ in range(-self._consumed % per_pass):  # the pass's padding batches
            self._frames()


def make_train_loader(cfg: TrainDataConfig, rank: int, world_size: int, local_rank: int,
                      device: torch.device | str) -> TrainLoader:
    """Build the training loader of one rank (validates the shards first).

    Args:
        cfg: the training data section.
        rank, world_size: global rank and number of ranks (the stream is split by global rank).
        local_rank: the GPU index on this node (DALI's device_id).
        device: the rank's torch device; batches are delivered there and 'auto' follows it.
    """
    return TrainLoader(cfg, rank, world_size, local_rank, device)


def make_eval_loader(cfg: EvalDataConfig, rank: int, world_size: int, local_rank: int,
                     device: torch.device | str) -> EvalLoader:
    """Build the evaluation loader of one rank; see `make_train_loader` for the arguments. The
    storage format picks the loader: a jpeg_frames set streams frames (`JpegFramesEvalLoader`)."""
    cls = JpegFramesEvalLoader if isinstance(_set_format(cfg.shards), JpegFrames) else EvalLoader
    return cls(cfg, rank, world_size, local_rank, device)


def _set_format(shards: str):
    """A shard set's storage format from its manifest alone, or None where it cannot be read (the
    loader then reports the problem, naming the file)."""
    path = Path(shards)
    try:
        return format_of(json.loads((path if path.name == "_info.json" else path / "_info.json").read_text()))
    except (OSError, ValueError):
        return None
