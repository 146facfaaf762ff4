"""The trainer for real: torchrun with 2 gloo processes on tiny shards, DALI CPU graphs, a real
word-vectors file; resume equality, NaN stop, clear errors before step 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sharding.build import main as build_main
from trainer.evaluate import topk_accuracy
from videos import write_video

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TRAIN_CLASSES = ["red_circle_rising", "blue_square_falling", "green_triangle_growing"]
TEST_CLASSES = ["red_square_falling", "blue_circle_growing"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer_data")
    for split, classes in (("train", TRAIN_CLASSES), ("test", TEST_CLASSES)):
        for k, c in enumerate(classes):
            for i in range(3):
                write_video(root / split / c / f"{c}_{i}.mp4", num_frames=20 + 6 * i + k)
    common = ["--workers", "0", "--quiet", "--clip-span", "8"]
    assert build_main(["--input", str(root / "train"), "--layout", "folders", "--split", "train",
                       "--out", str(root / "shards_train"), "--segment-frames", "16", *common]) == 0
    assert build_main(["--input", str(root / "test"), "--layout", "folders", "--split", "eval",
                       "--out", str(root / "shards_test"), *common]) == 0
    assert build_main(["--input", str(root / "train"), "--layout", "folders", "--split", "eval",
                       "--out", str(root / "shards_leak"), *common]) == 0  # training classes as a "test" set
    return root


def make_config(shards: Path, out: Path, **over) -> Path:
    cfg = {
        "run": {"out_dir": str(out), "log_every": 1, "threads": 1, "sample_log": True},
        "data": {"global_batch": 4, "train": {"shards": str(shards / "shards_train"), "clip_len": 4, "crop": 32,
                                              "resize_short": 40, "epoch_clips": 8, "num_threads": 1,
                                              "py_workers": 1}},
        "eval": {"every_epochs": 1, "quick_clips": 1, "clips": 2, "batch_size": 2, "num_threads": 1,
                 "py_workers": 0, "sets": [{"name": "unseen", "shards": str(shards / "shards_test"),
                                            "generalized": True}]},
        "embeddings": {"vectors": str(REPO / "sharding" / "data" / "demo_vectors.vec")},
        "model": {"backbone": "custom", "widths": [4, 8, 8, 16], "layers": [1, 1, 1, 1]},
        "optim": {"epochs": 3, "lr": 0.01, "lr_milestones": [2]},
        "checkpoint": {"every_steps": 1, "keep_last": 10},
    }
    for key, value in over.items():
        node = cfg
        *path, last = key.split(".")
        for k in path:
            node = node[k]
        node[last] = value
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def torchrun(config: Path, *extra, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, str(REPO / "trainer" / "main.py"), str(config), *extra],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def losses(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "train_log.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["step"]] = r["loss"]  # a step redone after a kill: the last value counts
    return out


@pytest.fixture(scope="module")
def full_run(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    r = torchrun(make_config(shards, out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_two_ranks_train_evaluate_and_log(full_run):
    out, r = full_run
    # DDP kept the ranks' parameters identical at every checkpoint
    for ck in sorted((out / "checkpoints").glob("ckpt_*.pt")):
        state = torch.load(ck, weights_only=True)
        assert len(state["param_checksums"]) == 2 and state["param_checksums"][0] == state["param_checksums"][1]
        assert state["config"]["data"]["global_batch"] == 4
    assert sorted(p.name for p in (out / "checkpoints").glob("ckpt_*.pt"))[-1] == "ckpt_0000006.pt"
    # the ranks saw disjoint videos in every epoch (2 steps per epoch)
    seen = [[json.loads(x) for x in (out / "samples" / f"rank{k}.jsonl").read_text().splitlines()] for k in (0, 1)]
    assert [len(s) for s in seen] == [6, 6]
    for epoch in range(3):
        vids = [{key.rsplit("_s", 1)[0] for row in s[2 * epoch:2 * epoch + 2] for key in row["keys"]} for s in seen]
        assert len(vids[0]) == len(vids[1]) == 4 and not vids[0] & vids[1]
    # metrics.jsonl agrees with the npz it points at
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {(r["epoch"], r["clips"], r["protocol"]) for r in rows} >= {
        (1, 1, "all_classes"), (2, 1, "all_classes"), (3, 2, "all_classes"), (3, 2, "generalized")}
    for row in rows:
        z = np.load(out / "eval" / f"unseen_e{row['epoch']}.npz")
        assert row["n_videos"] == len(z["labels"]) == 6 and sorted(z["video"].tolist()) == list(range(6))
        assert list(z["class_names"]) == sorted(TEST_CLASSES)
        if row["protocol"] == "all_classes" and row["clips"] == 2:
            assert row["top1"] == pytest.approx(topk_accuracy(z["pred"], z["labels"], z["class_emb"])["top1"])
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["epochs"] == 3
    # TensorBoard has the scalars and the per-class picture
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(out / "tb"))
    ea.Reload()
    assert {"train/loss", "train/lr", "train/clips_per_s", "train/data_wait_fraction",
            "eval/unseen/all_classes/top1", "eval/unseen/generalized/top1"} <= set(ea.Tags()["scalars"])
    assert "eval/unseen/per_class_top1" in ea.Tags()["images"]
    assert [e.value for e in ea.Scalars("train/lr")] == pytest.approx([0.01] * 4 + [0.001] * 2)


def test_kill_and_resume_gives_the_same_losses(full_run, shards, tmp_path):
    reference = losses(full_run[0])
    out = tmp_path / "killed"
    cfg = make_config(shards, out, **{"checkpoint.every_steps": 100})  # only the signal writes one mid-epoch
    # both ranks wait after step 3 (trainer.faults' `pause`) until the signal: it lands there on any machine
    proc = subprocess.Popen([*TORCHRUN, str(REPO / "trainer" / "main.py"), str(cfg)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "ZSVIDEO_FAULTS": "pause:after_step:3"})
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if sum("fault: paused at after_step 3" in x for x in seen) == 2:
            break
    proc.send_signal(signal.SIGTERM)  # torchrun passes it to both ranks
    text = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and "stopped by signal at step 3" in text, text[:3000] + "\n...\n" + text[-3000:]
    assert max(losses(out)) == 3
    r = torchrun(cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    resumed = losses(out)
    assert sorted(resumed) == list(range(1, 7))
    assert resumed == reference  # bit-identical losses at every step, before and after the stop


@pytest.mark.slow  # 10-30 s: outside the default run's 10-minute budget; `make test-all` runs it
def test_evaluate_cli_on_a_checkpoint(full_run):
    out, _ = full_run
    before = len((out / "metrics.jsonl").read_text().splitlines())
    r = subprocess.run([sys.executable, "-m", "trainer.evaluate", str(out.parent / "full.yaml"),
                        f"checkpoint={out / 'checkpoints' / 'ckpt_0000006.pt'}"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][before:]
    assert {r["protocol"] for r in rows} == {"all_classes", "generalized"} and rows[0]["clips"] == 2


def test_evaluate_cli_exactly_as_the_readme_writes_it(full_run, tmp_path):
    import re

    out, _ = full_run
    commands = [c.strip() for c in re.findall(r"python -m trainer\.evaluate [^`\n#]*", (REPO / "README.md").read_text())
                if "[" not in c]  # the concrete examples, not the usage line
    assert commands, "README.md shows no evaluation command"
    shapes = {tuple(w if "=" not in w else w.split("=", 1)[0] + "=" for w in c.split()[3:]) for c in commands}
    assert len(shapes) == 1, f"README.md writes the evaluation command in more than one way: {commands}"
    words = commands[0].split()
    assert words[:3] == ["python", "-m", "trainer.evaluate"]
    config = yaml.safe_load((out.parent / "full.yaml").read_text())
    config["run"]["out_dir"] = str(tmp_path / "eval_run")  # no checkpoints there
    cfg_path = tmp_path / "eval.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    ckpt = out / "checkpoints" / "ckpt_0000006.pt"
    # without a checkpoint: the error's hint is the README's syntax ...
    r = subprocess.run([sys.executable, "-m", "trainer.evaluate", str(cfg_path)], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 2 and "pass checkpoint=PATH" in r.stdout + r.stderr, r.stdout + r.stderr
    # ... and the README's command, with this test's config and checkpoint, evaluates
    args = [str(cfg_path) if w.endswith(".yaml") else f"checkpoint={ckpt}" if w.startswith("checkpoint=") else w
            for w in words[3:]]
    r = subprocess.run([sys.executable, "-m", "trainer.evaluate", *args], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "eval_run" / "metrics.jsonl").read_text().splitlines()]
    assert {x["protocol"] for x in rows} == {"all_classes", "generalized"} and {x["step"] for x in rows} == {6}


@pytest.mark.slow  # 10-30 s: outside the default run's 10-minute budget; `make test-all` runs it
def test_evaluate_without_training_shards_uses_the_checkpoints_classes(full_run, tmp_path):
    out, _ = full_run
    ckpt = out / "checkpoints" / "ckpt_0000006.pt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["train_classes"]
    cmd = [sys.executable, "-m", "trainer.evaluate", str(out.parent / "full.yaml"), f"checkpoint={ckpt}",
           f"data.train.shards={tmp_path / 'gone'}", f"run.out_dir={tmp_path / 'eval'}"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"training classes: {len(saved)} from {ckpt}" in r.stdout + r.stderr
    rows = [json.loads(x) for x in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()]
    before = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # the same checkpoint, the same classes: the same accuracies as with the shards present
    last = {(x["dataset"], x["protocol"]): x["top1"] for x in before if x["step"] == 6 and x["clips"] == 2}
    assert {(x["dataset"], x["protocol"]): x["top1"] for x in rows} == last
    # a checkpoint without classes and no shards: a clear error naming both
    bare = tmp_path / "bare.pt"
    torch.save({k: v for k, v in torch.load(ckpt, map_location="cpu", weights_only=True).items()
                if k != "train_classes"}, bare)
    r = subprocess.run([*cmd[:4], f"checkpoint={bare}", *cmd[5:]], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert r.returncode != 0 and "lists none" in r.stdout + r.stderr and "gone" in r.stdout + r.stderr


def test_nan_loss_stops_with_step_keys_and_checkpoint(shards, tmp_path):
    cfg = make_config(shards, tmp_path / "nan", **{"optim.lr": 1e30})
    r = torchrun(cfg)
    assert r.returncode != 0
    assert "loss is nan" in r.stderr or "loss is inf" in r.stderr
    assert "this rank's batch: [" in r.stderr and "_s0" in r.stderr and "Last good checkpoint" in r.stderr


def test_clear_errors_before_step_one(shards, tmp_path):
    missing = make_config(shards, tmp_path / "m", **{"data.train.shards": str(tmp_path / "no_shards")})
    r = subprocess.run([sys.executable, str(REPO / "trainer" / "main.py"), str(missing)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode != 0 and "no_shards" in r.stderr and "Traceback" not in r.stderr
    overlap = make_config(shards, tmp_path / "o", **{"eval.sets": [{"name": "leak", "shards": str(shards / "shards_leak")}]})
    r = subprocess.run([sys.executable, str(REPO / "trainer" / "main.py"), str(overlap)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode != 0 and "shares 3 classes with the training set" in r.stderr
    assert not (tmp_path / "o" / "train_log.jsonl").exists()
    typo = make_config(shards, tmp_path / "t", **{"optim.lr_milstones": [1]})
    r = subprocess.run([sys.executable, str(REPO / "trainer" / "main.py"), str(typo)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "optim.lr_milstones: unknown key" in r.stdout + r.stderr


def test_two_ranks_train_from_urls_with_a_stage_dir(shards, tmp_path):
    """data.train.shards and a test set as http:// URLs (a server on 127.0.0.1) with data.stage_dir:
    the node's ranks stage each set once (one GET per file over two ranks), train and evaluate from
    the local copies; a second run re-checks them without fetching a tar again. A URL without a stage
    dir is a config error naming the field."""
    from tests.test_stage import http_server

    with http_server(shards) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        over = {"data.train.shards": f"{url}/shards_train", "eval.sets": [{"name": "unseen", "shards": f"{url}/shards_test/"}],
                "optim.epochs": 1}
        r = subprocess.run([sys.executable, str(REPO / "trainer" / "main.py"), str(make_config(shards, tmp_path / "n", **over))],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
        assert r.returncode == 2 and "data.train.shards" in r.stdout + r.stderr and "data.stage_dir" in r.stdout + r.stderr
        stage_dir = tmp_path / "stage"
        r = torchrun(make_config(shards, tmp_path / "a", **over, **{"data.stage_dir": str(stage_dir)}))
        assert r.returncode == 0, r.stderr[-3000:]
        tars = [g for g in server.gets if g.endswith(".tar")]
        assert sorted(tars) == sorted(set(tars)) and len(tars) == len(list(shards.glob("shards_t*/*.tar")))
        staged = sorted(p.name.rsplit("-", 1)[0] for p in stage_dir.iterdir() if p.is_dir())
        assert staged == ["shards_test", "shards_train"]
        assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["data"]["train"]["shards"] == f"{url}/shards_train"
        server.gets.clear()
        r = torchrun(make_config(shards, tmp_path / "b", **over, **{"data.stage_dir": str(stage_dir)}))
        assert r.returncode == 0, r.stderr[-3000:]
        assert not [g for g in server.gets if g.endswith(".tar")]
