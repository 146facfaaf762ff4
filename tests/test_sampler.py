"""The samplers are pure functions: their statistics are checked on in-memory tables (no DALI)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dali_pipelines.sampler import EvalSampler, TrainSampler, resized_size
from sharding.reader import ShardTable
from sharding.segments import plan_segments

# Frame counts chosen for the edges: short (10), exactly one window (16), one more (17), one
# segment exactly (64), just past it (65), several segments (120, 200).
FRAMES = [120, 200, 10, 16, 17, 64, 65]


def make_table(frames=FRAMES, clip_span=16, segment_frames=64, width=172, height=128) -> ShardTable:
    cols = {k: [] for k in ("keys", "video_ids", "labels", "num_frames", "video_num_frames",
                            "first_frame", "segment", "own_start", "own_count", "width", "height",
                            "offset", "size")}
    for v, f in enumerate(frames):
        for s, seg in enumerate(plan_segments(f, clip_span, segment_frames)):
            for k, val in (("keys", f"vid{v}_s{s:03d}"), ("video_ids", f"vid{v}"), ("labels", v % 3),
                           ("num_frames", seg.num_frames), ("video_num_frames", f),
                           ("first_frame", seg.first_frame), ("segment", s),
                           ("own_start", seg.own_start), ("own_count", seg.own_count),
                           ("width", width), ("height", height), ("offset", 0), ("size", 1)):
                cols[k].append(val)
    # Shuffle the rows: the grouping must not rely on the tar order.
    perm = np.random.default_rng(0).permutation(len(cols["keys"]))
    cols = {k: np.asarray(v)[perm] for k, v in cols.items()}
    info = {"encoding": {"clip_span": clip_span}, "num_videos": len(frames)}
    return ShardTable.from_columns(cols, info)


def video_frames(table: ShardTable) -> list[int]:
    """Frame count of each of the table's videos (its numbering follows the rows' order)."""
    ids = table.columns["video_ids"][table.video_first_rows()]
    return [FRAMES[int(i[3:])] for i in ids]


def draws(sampler: TrainSampler, n: int):
    return [sampler.draw(i) for i in range(n)]


@pytest.mark.parametrize("clip_len,stride,segment_frames", [
    (16, 1, 64), (8, 1, 64), (8, 2, 64), (16, 1, None), (32, 1, None), (12, 3, None)])
def test_window_starts_uniform_and_inside_segment(clip_len, stride, segment_frames):
    """Segmented builds serve spans up to the build's; whole videos (keyframe-indexed: segment_frames
    None) serve any span, longer than the build's 16 too."""
    table = make_table(segment_frames=segment_frames)
    s = TrainSampler(table, batch_size=7, seed=3, clip_len=clip_len, stride=stride, epoch_clips=7 * 2000)
    span = (clip_len - 1) * stride + 1
    frames = video_frames(table)
    counts = {v: {} for v in range(len(FRAMES))}
    first_ids = table.columns["video_ids"][table.video_first_rows()]
    for d in draws(s, 14000):
        f = frames[d.video]
        t = d.start + int(table.columns["first_frame"][d.row])  # start within the video
        counts[d.video][t] = counts[d.video].get(t, 0) + 1
        assert table.columns["video_ids"][d.row] == first_ids[d.video]
        if f >= span:  # the whole window lies inside the stored segment
            assert 0 <= d.start and d.start + span <= table.columns["num_frames"][d.row]
        else:
            assert d.start == 0  # short video: one window, edge-padded by the decoder
    for v, f in enumerate(frames):
        w = max(f - span + 1, 1)
        obs = np.array([counts[v].get(t, 0) for t in range(w)])
        assert obs.sum() == sum(counts[v].values()), "a start outside 0..W-1"
        if w > 1:
            assert stats.chisquare(obs).pvalue > 1e-3, (v, obs)


def test_longer_span_than_the_build_refused_only_for_segments():
    with pytest.raises(ValueError, match="rebuild the shards with --clip-span 32"):
        TrainSampler(make_table(), batch_size=1, clip_len=32)
    TrainSampler(make_table(segment_frames=None), batch_size=1, clip_len=32)


def test_crop_uniform_and_flip_half():
    s = TrainSampler(make_table(), batch_size=1, seed=1, crop=112, epoch_clips=6000)
    ds = draws(s, 6000)
    xs = np.array([d.crop_x for d in ds])
    ys = np.array([d.crop_y for d in ds])
    assert xs.min() == 0 and xs.max() == 172 - 112 and ys.max() == 128 - 112
    assert stats.chisquare(np.bincount(xs, minlength=61)).pvalue > 1e-3
    assert stats.chisquare(np.bincount(ys, minlength=17)).pvalue > 1e-3
    flips = sum(d.flip for d in ds)
    assert stats.binomtest(flips, len(ds), 0.5).pvalue > 1e-3
    s_noflip = TrainSampler(make_table(), batch_size=1, flip=False, epoch_clips=100)
    assert not any(d.flip for d in draws(s_noflip, 100))


def test_resized_crop_range():
    assert resized_size(172, 128, 112) == (151, 112)
    assert resized_size(128, 170, 120) == (120, 159)
    s = TrainSampler(make_table(), batch_size=1, resize_short=112, epoch_clips=3000)
    ds = draws(s, 3000)
    assert max(d.crop_x for d in ds) == 151 - 112 and max(d.crop_y for d in ds) == 0
    assert {(d.width, d.height) for d in ds} == {(151, 112)}
    with pytest.raises(ValueError, match="smaller than the 112-pixel crop"):
        TrainSampler(make_table(), batch_size=1, resize_short=100, epoch_clips=10)


def test_stream_is_pure_and_split_by_global_position():
    table = make_table()
    # 7 videos, 2 ranks x 2: 1 step per epoch of 7 clips (positions 4..6 unused).
    r0 = TrainSampler(table, batch_size=2, rank=0, world_size=2, seed=5)
    r1 = TrainSampler(table, batch_size=2, rank=1, world_size=2, seed=5)
    one = TrainSampler(table, batch_size=4, rank=0, world_size=1, seed=5)
    assert r0.steps_per_epoch == 1 and one.steps_per_epoch == 1
    for n in range(6):  # three epochs of one step each
        e, j = divmod(n, 2)
        assert r0.draw(n) == one.draw(4 * e + 2 * j)  # rank 0 reads global positions 0, 2
        assert r1.draw(n) == one.draw(4 * e + 2 * j + 1)  # rank 1 reads 1, 3
    # A fresh sampler (e.g. a restored run) gives the same draws.
    again = TrainSampler(table, batch_size=2, rank=1, world_size=2, seed=5)
    assert [again.draw(n) for n in range(6)] == [r1.draw(n) for n in range(6)]
    assert TrainSampler(table, batch_size=2, seed=6).draw(0) != TrainSampler(table, batch_size=2, seed=5).draw(0) \
        or TrainSampler(table, batch_size=2, seed=6).draw(1) != TrainSampler(table, batch_size=2, seed=5).draw(1)


def test_epoch_is_a_permutation_and_longer_epochs_concatenate():
    table = make_table()
    s = TrainSampler(table, batch_size=1, seed=2)
    assert sorted(s.epoch_order(0)) == list(range(7))
    assert not np.array_equal(s.epoch_order(0), s.epoch_order(1)) or not np.array_equal(
        s.epoch_order(1), s.epoch_order(2))
    long = TrainSampler(table, batch_size=2, seed=2, epoch_clips=17)
    order = long.epoch_order(0)
    assert len(order) == 17 and long.steps_per_epoch == 8
    assert sorted(order[:7]) == list(range(7)) and sorted(order[7:14]) == list(range(7))
    with pytest.raises(ValueError, match="less than one global batch"):
        TrainSampler(table, batch_size=4, world_size=2)


def test_span_longer_than_build_is_refused():
    with pytest.raises(ValueError, match="--clip-span 31"):
        TrainSampler(make_table(), batch_size=1, clip_len=16, stride=2)


def test_eval_every_video_once_over_ranks():
    # 7 videos, 2 ranks, batch 3 (divides neither 7 nor the 4 / 3 per rank).
    table = make_table()
    samplers = [EvalSampler(table, batch_size=3, rank=r, world_size=2, num_clips=5) for r in range(2)]
    assert {s.num_batches for s in samplers} == {2}
    seen = []
    for s in samplers:
        videos = [s.video_at(n) for n in range(s.samples_per_pass)]
        seen += [v for v in videos if v >= 0]
        assert videos == [s.video_at(n + s.samples_per_pass) for n in range(s.samples_per_pass)]
    assert sorted(seen) == list(range(7))
    pad = samplers[1].draw(5)
    shortest = table.video_rows[table.video_ptr[video_frames(table).index(10)]]
    assert pad.video == -1 and pad.row == shortest  # the shortest video (10 frames) fills


def test_eval_clip_positions():
    table = make_table(segment_frames=None)  # eval sets store whole videos
    v120, v200, v10 = (video_frames(table).index(f) for f in (120, 200, 10))
    s = EvalSampler(table, batch_size=1, num_clips=3, clip_len=16)
    assert s.clip_starts(v120).tolist() == [0, 52, 104]  # F=120: linspace(0, 104, 3)
    idx = s.frame_indices(v120).reshape(3, 16)
    assert idx[1].tolist() == list(range(52, 68)) and idx[2, -1] == 119
    short = s.frame_indices(v10).reshape(3, 16)  # F=10: all clips at 0, last 6 frames repeat frame 9
    assert short[0].tolist() == list(range(10)) + [9] * 6 and (short == short[0]).all()
    d = s.draw(0)
    assert (d.crop_x, d.crop_y) == ((172 - 112) // 2, (128 - 112) // 2)
    r = EvalSampler(table, batch_size=1, num_clips=25, clip_positions="random", seed=4)
    starts = r.clip_starts(v200)
    assert starts.min() >= 0 and starts.max() <= 200 - 16 and (np.diff(starts) >= 0).all()
    assert len(set(starts.tolist())) > 10  # spread, not one position
    assert np.array_equal(starts, EvalSampler(table, batch_size=2, num_clips=25, clip_positions="random",
                                              seed=4, world_size=2, rank=1).clip_starts(v200))
