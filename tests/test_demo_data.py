"""The demo world's data: the generator (sharding.demo) and its word vectors (sharding/data/demo_vectors.vec)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from sharding.demo import world as demo
from sharding.demo.vectors import DEFAULT_OUT as VEC_FILE, check_vocabulary, spacy_key

# A small world (3 x 2 x 4 = 24 classes, one 9-frame video each) keeps the tests to a few seconds.
SMALL = demo.WorldConfig(
    seed=7, videos_per_class=2, frames=9, colours=("red", "green", "blue"), shapes=("circle", "square"),
    motions=("rising", "falling", "growing", "shrinking"), seen_test=1,
)


def read_vec(path: Path) -> dict[str, np.ndarray]:
    """word2vec text format -> {word: vector}, checking the header."""
    lines = path.read_text(encoding="utf-8").splitlines()
    n, dim = map(int, lines[0].split())
    vecs = {}
    for line in lines[1:]:
        word, *vals = line.split(" ")
        vecs[word] = np.array(vals, dtype=np.float32)
        assert vecs[word].shape == (dim,), word
    assert len(vecs) == n == len(lines) - 1
    return vecs


def decode(path: Path) -> tuple[np.ndarray, float]:
    """All frames of a video as (F, H, W, 3) uint8 RGB, and its frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, float(stream.average_rate)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "world"
    return out, demo.generate(out, SMALL, workers=1)


def test_layout_and_splits(world):
    out, splits = world
    assert json.loads((out / "splits.json").read_text()) == splits
    classes = splits["seen"] + splits["unseen"]
    assert len(classes) == len(set(classes)) == 24
    assert not set(splits["seen"]) & set(splits["unseen"])
    assert len(splits["unseen"]) == 4  # one in six by default
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(classes)
    for name in classes:
        files = sorted((out / "videos" / name).iterdir())
        assert [f.name for f in files] == [f"{name}_{i:03d}.mp4" for i in range(SMALL.videos_per_class)]
    assert splits["vocabulary"] == sorted({w for name in classes for w in name.split("_")})
    # seen_test: the last video of every seen class, paths relative to OUT
    assert splits["seen_test"] == [f"videos/{n}/{n}_001.mp4" for n in splits["seen"]]
    assert all((out / p).is_file() for p in splits["seen_test"])


def test_unseen_words_all_appear_in_seen_classes(world):
    _, splits = world
    seen_words = {w for name in splits["seen"] for w in name.split("_")}
    for name in splits["unseen"]:
        assert set(name.split("_")) <= seen_words, name


def test_default_split_is_balanced():
    classes = demo.WorldConfig().classes()
    assert len(classes) >= 24
    unseen = [classes[i] for i in demo.choose_unseen(classes, 12, split_seed=0)]
    for slot, per_word in ((0, 3), (1, 4), (2, 2)):  # 4 colours, 3 shapes, 6 motions over 12 classes
        counts = {c[slot]: 0 for c in classes}
        for c in unseen:
            counts[c[slot]] += 1
        assert set(counts.values()) == {per_word}, counts
    for a, b in ((0, 1), (0, 2), (1, 2)):  # no two unseen classes share a word pair
        assert len({(c[a], c[b]) for c in unseen}) == len(unseen)


def test_videos_decode_to_the_stated_frames_and_size(world):
    out, splits = world
    for name in (splits["seen"][0], splits["unseen"][-1]):
        frames, fps = decode(out / "videos" / name / f"{name}_000.mp4")
        assert frames.shape == (SMALL.frames, SMALL.height, SMALL.width, 3)
        assert fps == SMALL.fps
        assert frames.std() > 10  # a textured scene, not a blank frame


def test_generation_is_deterministic_and_independent_of_workers(world, tmp_path):
    out, splits = world
    again = demo.generate(tmp_path / "again", SMALL, workers=2)
    assert again == splits
    for rel in sorted(p.relative_to(out) for p in (out / "videos").rglob("*.mp4")):
        assert (out / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel


def test_render_is_deterministic_and_seed_dependent():
    cfg = demo.WorldConfig(frames=6)
    a = demo.render_video(cfg, "blue", "triangle", "shaking", np.random.default_rng([0, 1, 2]))
    b = demo.render_video(cfg, "blue", "triangle", "shaking", np.random.default_rng([0, 1, 2]))
    c = demo.render_video(cfg, "blue", "triangle", "shaking", np.random.default_rng([1, 1, 2]))
    assert a.shape == (6, cfg.height, cfg.width, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("seed", range(5))
def test_motions_mean_what_their_words_say(seed):
    """Rising goes up (rows shrink), growing grows, blinking blinks; the target stays in the canvas."""
    frames, w, h = 32, 180, 136
    tracks = {m: demo._target_track(np.random.default_rng(seed), m, frames, w, h) for m in demo.MOTIONS}
    assert np.all(np.diff(tracks["rising"]["y"]) < 0)
    assert np.all(np.diff(tracks["falling"]["y"]) > 0)
    assert np.all(np.diff(tracks["growing"]["r"]) > 0) and tracks["growing"]["r"][-1] > 1.8 * tracks["growing"]["r"][0]
    assert np.all(np.diff(tracks["shrinking"]["r"]) < 0)
    assert 0 < tracks["blinking"]["on"].sum() < frames
    assert np.all(tracks["shaking"]["on"]) and np.ptp(np.diff(tracks["shaking"]["x"])) > 2
    for m, t in tracks.items():
        assert np.all(t["x"] - t["r"] >= 0) and np.all(t["x"] + t["r"] <= w), m
        assert np.all(t["y"] - t["r"] >= 0) and np.all(t["y"] + t["r"] <= h), m


def test_unknown_words_and_odd_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown words"):
        demo.generate(tmp_path, demo.WorldConfig(colours=("red", "mauve")))
    with pytest.raises(ValueError, match="even size"):
        demo.generate(tmp_path, demo.WorldConfig(width=171))


def test_every_demo_word_has_its_own_vector():
    vecs = read_vec(VEC_FILE)
    assert set(vecs) == set(demo.VOCABULARY)
    table = np.stack([vecs[w] for w in demo.VOCABULARY])
    assert table.shape == (len(demo.VOCABULARY), 300)
    assert np.all(np.isfinite(table)) and np.all(np.linalg.norm(table, axis=1) > 1)
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, 0)
    assert cos.max() < 0.95  # no two words share a row of the pruned table
    # and every default class phrase gets a distinct embedding
    emb = np.stack([np.mean([unit[demo.VOCABULARY.index(w)] for w in c], axis=0) for c in demo.WorldConfig().classes()])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cos = emb @ emb.T
    np.fill_diagonal(cos, 0)
    assert cos.max() < 0.99


def test_spacy_hash_matches_known_keys():
    # spaCy's documentation: nlp.vocab.strings["coffee"] == 3197928453018144401 (6 bytes: tail only)
    assert spacy_key("coffee") == 3197928453018144401
    # keys found in en_core_web_md-3.7.1's key2row (8 bytes: one block, no tail; 9: block + tail)
    assert spacy_key("triangle") == 4150482643485105567
    assert spacy_key("shrinking") == 4623095468875097554


def test_check_vocabulary_refuses_shared_rows():
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    key2row = {spacy_key("left"): 0, spacy_key("leftward"): 1, spacy_key("rightward"): 1, spacy_key("up"): 2}
    assert check_vocabulary(["left", "up"], vectors, key2row) == {"left": 0, "up": 2}
    with pytest.raises(ValueError, match="sharing one row"):
        check_vocabulary(["leftward", "rightward"], vectors, key2row)
    with pytest.raises(ValueError, match="not in the spaCy table"):
        check_vocabulary(["sideways"], vectors, key2row)
