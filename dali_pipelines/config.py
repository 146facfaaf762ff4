"""Configuration sections of the data loaders (the trainer composes them into its own config).

Each loader takes its own section: `make_train_loader(cfg.data.train, ...)`. Nothing here imports
the trainer, torch or DALI, so the sections validate anywhere.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Standardization = Literal["per_frame", "mean_std"]
Device = Literal["auto", "gpu", "cpu"]


class Section(BaseModel):
    """The base of every config section, the loaders' and the trainer's: unknown keys fail, values
    are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _ClipSection(Section):
    @model_validator(mode="after")
    def _crop_fits_resize(self):
        # The crop is taken from the (optionally resized) frame; a smaller frame could never hold it.
        resize_short = getattr(self, "resize_short", None)
        if resize_short is not None and resize_short < self.crop:
            raise ValueError(f"resize_short ({resize_short}) must be >= crop ({self.crop})")
        if getattr(self, "device", None) == "cpu" and getattr(self, "decode_device", None) == "gpu":
            raise ValueError("decode_device 'gpu' needs device 'gpu' or 'auto' (a CPU graph decodes on the CPU)")
        return self


class TrainDataConfig(_ClipSection):
    """Training clips: one random window + random crop + flip per sample."""

    shards: str  # a shard directory or its _info.json (built with `python -m sharding.build --split train`)
    verify: Literal["size", "sha256"] = "size"  # start-up check of every tar: its size, or also its sha256 (hashed once, cached beside the shards by path, size, mtime: sharding.reader.check_sha256)
    batch_size: int = Field(22, gt=0)  # clips per rank and step (global batch = batch_size * world_size)
    clip_len: int = Field(16, gt=0)  # frames per clip (T)
    stride: int = Field(1, gt=0)  # temporal stride between the clip's frames
    crop: int = Field(112, gt=0)  # side of the square random crop
    resize_short: int | None = Field(None, gt=0)  # resize the short side to this before cropping; None = as stored
    flip: bool = True  # horizontal flip of the whole clip with p=0.5
    standardization: Standardization = "per_frame"  # per_frame = tf.image.per_image_standardization; mean_std = Kinetics mean/std
    seed: int = 0  # the sample stream is a pure function of (seed, epoch, position)
    num_threads: int = Field(2, gt=0)  # DALI CPU threads per pipeline
    prefetch: int = Field(2, gt=0)  # batches DALI prepares ahead (prefetch_queue_depth)
    py_workers: int = Field(0, ge=0)  # processes running the sample callback; 0 = in the main process (fastest: the callback only reads bytes and draws numbers; measured in benchmarks/RESULTS.md)
    device: Device = "auto"  # auto = gpu (mixed decoder) when the trainer's device is CUDA
    decode_device: Device = "auto"  # on a GPU graph: gpu = NVDEC, cpu = decode on the num_threads CPU threads, then crop/flip/layout on the GPU; auto = gpu (the rule: dali_pipelines.loader.resolve_decode_device)
    epoch_clips: int | None = Field(None, gt=0)  # clips per epoch (over all ranks); None = number of training videos
    hw_decoder_load: float | None = Field(None, ge=0, le=1)  # JPEG frames on a GPU (mixed decode): the share of images for the hardware JPEG decoder (A100/H100); 0 = nvJPEG on CUDA cores only; None = DALI's default
    pan_min_side: int | None = Field(None, gt=0)  # still-image shards: smallest pan/zoom window side; None = crop (the paper: 112)


class EvalDataConfig(_ClipSection):
    """Evaluation: every video once, N clips each, centre crop."""

    shards: str  # a shard directory or its _info.json (built with `--split eval`: one sample per whole video)
    verify: Literal["size", "sha256"] = "size"  # start-up check of every tar: its size, or also its sha256 (hashed once, cached beside the shards by path, size, mtime: sharding.reader.check_sha256)
    batch_size: int = Field(4, gt=0)  # videos per rank and step
    num_clips: int = Field(25, gt=0)  # clips per video (N)
    clip_len: int = Field(16, gt=0)  # frames per clip (T)
    stride: int = Field(1, gt=0)  # temporal stride between the clip's frames
    crop: int = Field(112, gt=0)  # side of the square centre crop
    resize_short: int | None = Field(None, gt=0)  # resize the short side to this before cropping; None = as stored
    clip_positions: Literal["uniform", "random"] = "uniform"  # uniform = evenly spread starts; random = seeded per video
    standardization: Standardization = "per_frame"  # must match the training section
    seed: int = 0  # used by clip_positions='random' only
    num_threads: int = Field(2, gt=0)  # DALI CPU threads per pipeline
    prefetch: int = Field(2, gt=0)  # batches DALI prepares ahead (prefetch_queue_depth)
    py_workers: int = Field(0, ge=0)  # processes running the sample callback; 0 = in the main process
    device: Device = "auto"  # auto = gpu (mixed decoder) when the trainer's device is CUDA
    decode_device: Device = "auto"  # on a GPU graph: gpu = NVDEC, cpu = decode on the num_threads CPU threads, then crop/flip/layout on the GPU; auto = gpu (the rule: dali_pipelines.loader.resolve_decode_device)
