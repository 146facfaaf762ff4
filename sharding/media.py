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

from sharding import ivf
from sharding.encode import StreamEncoder, VideoError, output_size, plan_frames, probe, resized_frames
from sharding.images import process_image
from sharding.layouts import VideoItem
from sharding.segments import plan_segments


def process_video(item: VideoItem, label: int, opts: dict) -> dict:
    """Decode, resize, segment and encode one video (see the module docstring for the result),
    streaming: each output frame goes to the encoders of the segments that hold it as it decodes, so
    a worker holds one frame and the compressed segments, whatever the video's length."""
    try:
        bytes_in = os.path.getsize(item.path) if os.path.exists(item.path) else 0
        pr = probe(item.path)
        plan = plan_frames(pr, opts["fps"], opts["clip_span"], opts.get("strict_frame_count", False))
        n = len(plan.indices)
        width, height = output_size(pr.src_width, pr.src_height, opts["short_side"])
        seg_frames = (opts["segment_frames"] or None) if opts["split"] == "train" else None
        segments = plan_segments(n, opts["clip_span"], seg_frames)
        ext = opts["container"]
        open_: dict[int, StreamEncoder] = {}
        data: dict[int, bytes] = {}
        s_next = 0  # segments start in frame order
        for f, planes in enumerate(resized_frames(item.path, pr, plan, opts["short_side"])):
            while s_next < len(segments) and segments[s_next].first_frame == f:
                open_[s_next] = StreamEncoder(width, height, plan.fps, opts["codec"], opts["crf"],
                                              opts["speed"], opts["gop"], ext)
                s_next += 1
            for s in list(open_):
                open_[s].add(planes)
                if f == segments[s].first_frame + segments[s].num_frames - 1:
                    data[s] = open_.pop(s).finish()
        if open_ or len(data) != len(segments):
            raise VideoError(f"{len(data)} of {len(segments)} segments were encoded")
        samples = []
        for s, seg in enumerate(segments):
            key = item.video_id if opts["split"] == "eval" else f"{item.video_id}_s{s:03d}"
            meta = {
                "key": key, "video_id": item.video_id, "class_name": item.class_name, "label": label,
                "source": item.path, "fps": float(plan.fps), "num_frames": seg.num_frames,
                "video_num_frames": n, "first_frame": seg.first_frame, "segment": s,
                "num_segments": len(segments), "own_start": seg.own_start, "own_count": seg.own_count,
                "width": width, "height": height, "short": n < opts["clip_span"],
                "vfr_converted": plan.vfr, "src_width": pr.src_width, "src_height": pr.src_height,
            }
            if ext == "ivf":  # where a reader may cut the stream (FORMAT.md)
                meta["keyframes"], meta["keyframe_offsets"] = ivf.keyframes(data[s])
            samples.append((key, ext, data[s], meta))
        result = {"video_id": item.video_id, "samples": samples, "bytes_in": bytes_in, "short": n < opts["clip_span"]}
        if plan.warning:
            result["warning"] = {"path": item.path, "video_id": item.video_id, "declared_frames": pr.declared,
                                 "decoded_frames": pr.num_decoded, "stored_frames": n, "reason": plan.warning}
        return result
    except (VideoError, ivf.IVFError) as e:
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
        return {"strict_frame_count": args.strict_frame_count}

    def worker_options(self, args):
        return {"media": self.name, "split": args.split, "short_side": args.short_side, "fps": args.fps,
                "codec": args.codec, "container": args.container, "crf": args.crf, "speed": args.speed,
                "gop": args.gop, "clip_span": args.clip_span, "segment_frames": args.segment_frames,
                "strict_frame_count": args.strict_frame_count}

    def encoding(self, args):
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
    return MEDIA[opts["media"]].process(item, label, opts)
