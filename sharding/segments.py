"""Cut a video into training segments whose owned window starts partition the video's starts.

DALI decodes an in-memory video from its first frame up to the requested window (it cannot seek),
so a random 16-frame window of a 250-frame video costs ~133 decoded frames on average. Storing
overlapping segments of at most `segment_frames` frames bounds that cost (docs/DESIGN.md,
DALI cannot seek in memory; the keyframe-indexed ivf layout has since superseded segments).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    """Frames [first_frame, first_frame + num_frames) of a video; owns the window starts
    [first_frame + own_start, first_frame + own_start + own_count)."""

    first_frame: int
    num_frames: int
    own_start: int
    own_count: int


def num_windows(num_frames: int, clip_span: int) -> int:
    """Window starts of a video: `max(F - span + 1, 1)` (a short video has one, edge-padded)."""
    return max(num_frames - clip_span + 1, 1)


def plan_segments(num_frames: int, clip_span: int = 16, segment_frames: int | None = 64) -> list[Segment]:
    """Split a video of `num_frames` frames into segments that own nearly equal numbers of starts.

    Args:
        num_frames: frames in the whole video (>= 1).
        clip_span: frames one window covers: (clip_len - 1) * stride + 1.
        segment_frames: the most frames a segment holds (>= clip_span); None = one whole segment.

    Returns:
        Segments in order; their owned starts are disjoint, cover every start of the video, and
        their counts differ by at most one.

    Example, F=120, span 16, segment 64 (49 starts fit in a segment): 105 starts -> 3 x 35:
        >>> [(s.first_frame, s.num_frames, s.own_count) for s in plan_segments(120, 16, 64)]
        [(0, 50, 35), (35, 50, 35), (70, 50, 35)]
    """
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    windows = num_windows(num_frames, clip_span)
    if segment_frames is None:
        return [Segment(0, num_frames, 0, windows)]
    if segment_frames < clip_span:
        raise ValueError(f"segment_frames ({segment_frames}) must be >= the clip span ({clip_span})")
    per_segment = segment_frames - clip_span + 1
    k = math.ceil(windows / per_segment)
    base, extra = divmod(windows, k)
    segments, start = [], 0
    for i in range(k):
        count = base + (1 if i < extra else 0)
        end = min(num_frames, start + count - 1 + clip_span)  # one past the last frame needed
        segments.append(Segment(start, end - start, 0, count))
        start += count
    return segments
