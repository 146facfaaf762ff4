"""What the builder does with one input, per kind of medium: videos, or still images (`--layout images`).

The builder (`sharding.build`) is the same for both; a `Media` handler says what belongs to the
build's identity, which options its workers need, how one input becomes samples (`process`, run in
a worker process) and what the manifest's `encoding` says.

A worker returns, for one input, either
    {"video_id", "samples": [(key, ext, bytes, meta)], "bytes_in", "short"[, "warning"]}  (stored), or
    {"video_id", "path", "error": reason}                                     (listed in `errors`).
"""

from __future__ import annotations

import argparse
import os
from fractions import Fraction
from typing import NamedTuple

from sharding import ivf
from sharding.encode import (JpegFramesEncoder, NeedTwoPasses, OnePassFrames, StreamEncoder, VideoError,
                             frame_count_warning, output_size, plan_frames, probe, resized_frames)
from sharding.faults import fault_point
from sharding.formats import FormatError, format_named
from sharding.images import process_image
from sharding.layouts import VideoItem
from sharding.segments import plan_segments


class _Encoded(NamedTuple):
    """One input, encoded: what the samples' metadata needs."""

    data: dict[int, bytes]       # segment -> encoded bytes
    segments: list               # sharding.segments.Segment, in order
    num_frames: int              # stored frames (after the constant-rate grid)
    width: int
    height: int
    fps: Fraction
    vfr: bool
    src_width: int
    src_height: int
    declared: int
    num_decoded: int
    warning: str | None


def _encoder(width: int, height: int, fps: Fraction, opts: dict) -> StreamEncoder | JpegFramesEncoder:
    if opts["codec"] == "jpeg":
        return JpegFramesEncoder(width, height, opts["jpeg_quality"])
    return StreamEncoder(width, height, fps, opts["codec"], opts["crf"], opts["speed"], opts["gop"],
                         opts["container"])


def _encode_one_pass(path: str, opts: dict) -> _Encoded:
    """A whole-video sample in one decode (`OnePassFrames`); raises NeedTwoPasses where it can't."""
    src = OnePassFrames(path, opts["short_side"], opts["fps"])
    enc = None
    for planes in src:
        enc = enc or _encoder(src.width, src.height, src.fps, opts)
        enc.add(planes)
    warning = frame_count_warning(src.num_decoded, src.declared, src.decode_error, opts["clip_span"],
                                  opts.get("strict_frame_count", False), src.span, src.src_rate)  # no frame: raises
    n = src.num_out
    return _Encoded({0: enc.finish()}, plan_segments(n, opts["clip_span"], None), n, src.width, src.height,
                    src.fps, src.vfr, src.src_width, src.src_height, src.declared, src.num_decoded, warning)


def _encode_two_passes(path: str, opts: dict, seg_frames: int | None) -> _Encoded:
    """Timestamps first (`probe`, `plan_frames`), then decode again and stream each output frame to
    the encoders of the segments that hold it (at most a few open at once)."""
    pr = probe(path)
    plan = plan_frames(pr, opts["fps"], opts["clip_span"], opts.get("strict_frame_count", False))
    n = len(plan.indices)
    width, height = output_size(pr.src_width, pr.src_height, opts["short_side"])
    segments = plan_segments(n, opts["clip_span"], seg_frames)
    open_: dict[int, StreamEncoder] = {}
    data: dict[int, bytes] = {}
    s_next = 0  # segments start in frame order
    for f, planes in enumerate(resized_frames(path, pr, plan, opts["short_side"])):
        while s_next < len(segments) and segments[s_next].first_frame == f:
            open_[s_next] = _encoder(width, height, plan.fps, opts)
            s_next += 1
        for s in list(open_):
            open_[s].add(planes)
            if f == segments[s].first_frame + segments[s].num_frames - 1:
                data[s] = open_.pop(s).finish()
    if open_ or len(data) != len(segments):
        raise VideoError(f"{len(data)} of {len(segments)} segments were encoded")
    return _Encoded(data, segments, n, width, height, plan.fps, plan.vfr, pr.src_width, pr.src_height,
                    pr.declared, pr.num_decoded, plan.warning)


def process_video(item: VideoItem, label: int, opts: dict) -> dict:
    """Decode, resize, segment and encode one video (see the module docstring for the result).

    Streamed, so a worker holds a frame or two and the compressed output whatever the video's
    length: whole-video samples (eval, ivf) decode once (`OnePassFrames`); segmented ones, and
    inputs whose timestamps do not increase, decode twice (timestamps, then frames). Both give
    the same frames."""
    try:
        bytes_in = os.path.getsize(item.path) if os.path.exists(item.path) else 0
        seg_frames = (opts["segment_frames"] or None) if opts["split"] == "train" else None
        v = None
        if seg_frames is None:
            try:
                v = _encode_one_pass(item.path, opts)
            except NeedTwoPasses:
                v = None
        v = v or _encode_two_passes(item.path, opts, seg_frames)
        n, fmt, samples = v.num_frames, format_named(opts["container"]), []
        for s, seg in enumerate(v.segments):
            key = item.video_id if opts["split"] == "eval" else f"{item.video_id}_s{s:03d}"
            meta = {
                "key": key, "video_id": item.video_id, "class_name": item.class_name, "label": label,
                "source": item.path, "fps": float(v.fps), "num_frames": seg.num_frames,
                "video_num_frames": n, "first_frame": seg.first_frame, "segment": s,
                "num_segments": len(v.segments), "own_start": seg.own_start, "own_count": seg.own_count,
                "width": v.width, "height": v.height, "short": n < opts["clip_span"],
                "vfr_converted": v.vfr, "src_width": v.src_width, "src_height": v.src_height,
            }
            meta.update(fmt.sample_lists(v.data[s]))  # ivf: keyframes; jpeg_frames: frame offsets
            samples.append((key, fmt.ext, v.data[s], meta))
        result = {"video_id": item.video_id, "samples": samples, "bytes_in": bytes_in, "short": n < opts["clip_span"]}
        if v.warning:
            result["warning"] = {"path": item.path, "video_id": item.video_id, "declared_frames": v.declared,
                                 "decoded_frames": v.num_decoded, "stored_frames": n, "reason": v.warning}
        return result
    except (VideoError, ivf.IVFError, FormatError) as e:
        return {"video_id": item.video_id, "path": item.path, "error": str(e)}
    except Exception as e:  # an unexpected library failure on one file must not stop the build
        return {"video_id": item.video_id, "path": item.path, "error": f"unexpected {type(e).__name__}: {e}"}


class Media:
    """One kind of input. Subclasses fill in the four hooks; instances are stateless."""

    name = ""

    def identity(self, args: argparse.Namespace) -> dict:
        """Keys added to the build's identity (`_build.json`) beyond the common ones."""
        return {}

    def worker_options(self, args: argparse.Namespace) -> dict:
        """The options `process` reads (a plain dict: it is pickled to every worker)."""
        raise NotImplementedError

    def encoding(self, args: argparse.Namespace) -> dict:
        """The manifest's `encoding` entry."""
        raise NotImplementedError

    @staticmethod
    def process(item: VideoItem, label: int, opts: dict) -> dict:
        """One input -> its samples or its error (runs in a worker process)."""
        raise NotImplementedError


class Videos(Media):
    name = "video"

    def identity(self, args):  # which inputs are stored depends on it
        jpeg = {"jpeg_quality": args.jpeg_quality} if args.codec == "jpeg" else {}  # VP9/H.264 identities unchanged
        return {"strict_frame_count": args.strict_frame_count, **jpeg}

    def worker_options(self, args):
        return {"media": self.name, "split": args.split, "short_side": args.short_side, "fps": args.fps,
                "codec": args.codec, "container": args.container, "crf": args.crf, "speed": args.speed,
                "gop": args.gop, "clip_span": args.clip_span, "segment_frames": args.segment_frames,
                "strict_frame_count": args.strict_frame_count, "jpeg_quality": args.jpeg_quality}

    def encoding(self, args):
        if args.codec == "jpeg":  # every frame a JPEG: no rate control, no keyframes
            return {"codec": "jpeg", "ext": format_named(args.container).ext, "container": args.container,
                    "short_side": args.short_side, "fps": args.fps, "pix_fmt": "yuv420p", "segment_frames": None,
                    "clip_span": args.clip_span, "quality": args.jpeg_quality, "crf": None, "speed": None, "gop": 1}
        return {"codec": args.codec, "ext": args.container, "container": args.container,
                "short_side": args.short_side, "fps": args.fps, "pix_fmt": "yuv420p",
                "segment_frames": (args.segment_frames or None) if args.split == "train" else None,
                "clip_span": args.clip_span, "crf": args.crf, "speed": args.speed, "gop": args.gop}

    process = staticmethod(process_video)


class Images(Media):
    """Still images (SUN397): one JPEG sample per image, stored as a one-frame video (FORMAT.md)."""

    name = "image"

    def identity(self, args):  # only image builds carry it: video builds keep their identity
        return {"image": {"min_side": args.image_min_side, "max_side": args.image_max_side,
                          "quality": args.jpeg_quality}}

    def worker_options(self, args):
        return {"media": self.name, "image_min_side": args.image_min_side,
                "image_max_side": args.image_max_side, "jpeg_quality": args.jpeg_quality}

    def encoding(self, args):
        # one-frame "videos": each image owns one window start (clip_span 1); FORMAT.md
        return {"media": "image", "codec": "jpeg", "ext": "jpg", "container": "jpeg",
                "min_short_side": args.image_min_side, "max_short_side": args.image_max_side,
                "quality": args.jpeg_quality, "segment_frames": None, "clip_span": 1}

    process = staticmethod(process_image)


MEDIA = {m.name: m for m in (Videos(), Images())}


def media_for(layout: str) -> Media:
    """The handler of a `--layout`: images for `images`, videos for every other layout."""
    return MEDIA["image" if layout == "images" else "video"]


def process_item(item: VideoItem, label: int, opts: dict) -> dict:
    """The worker's entry point: dispatch one input to its medium's `process`."""
    fault_point("video", item.video_id)
    return MEDIA[opts["media"]].process(item, label, opts)
