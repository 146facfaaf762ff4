"""Trainer pieces that need no shards: configs, the LR schedule, the model, the accuracy functions."""

from __future__ import annotations

import re

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from trainer.checkpoint import backbone_state_from, latest_checkpoint, list_checkpoints, save_checkpoint
from trainer.config import ConfigError, OptimConfig, load_config, lr_at
from trainer.evaluate import protocol1, topk_accuracy
from trainer.model import R2Plus1D, build_model

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.run.out_dir


def test_author_config_is_the_seed_run():
    cfg = load_config(CONFIGS[0].parent / "author.yaml")
    assert cfg.data.global_batch == 88 and cfg.data.train.clip_len == 16 and cfg.data.train.crop == 112
    assert cfg.data.train.standardization == "per_frame" and cfg.eval.clips == 25
    assert cfg.optim.epochs == 70 and cfg.model.backbone == "r2plus1d_18" and cfg.model.dropout == 0.05
    lrs = [lr_at(cfg.optim, e) for e in range(70)]
    assert lrs[:40] == [1e-3] * 40
    assert all(lr == pytest.approx(1e-4) for lr in lrs[40:61])
    assert all(lr == pytest.approx(1e-5) for lr in lrs[61:])
    assert {s.name for s in cfg.eval.sets} == {"ucf101", "hmdb51"}


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


BASE = """
run: {out_dir: runs/x}
data: {train: {shards: s}}
embeddings: {vectors: v.bin}
"""


def test_unknown_key_fails_naming_field_and_file(tmp_path):
    p = _write(tmp_path, BASE + "optim: {lr: 0.1, lr_milstones: [3]}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "optim.lr_milstones: unknown key" in str(e.value) and str(p) in str(e.value)


def test_invalid_value_names_what_is_allowed(tmp_path):
    p = _write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"data.train.standardization: Input should be 'per_frame' or 'mean_std'"):
        load_config(p, ["data.train.standardization=zscore"])
    with pytest.raises(ConfigError, match="data.train.batch_size is derived"):
        load_config(p, ["data.train.batch_size=8"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_apply_with_yaml_types(tmp_path):
    cfg = load_config(_write(tmp_path, BASE), ["optim.lr=1e-4", "run.out_dir=runs/y", "optim.lr_milestones=[2, 5]",
                                               "model.backbone=custom", "model.widths=[8,16,32,64]",
                                               "model.layers=[1,1,1,1]"])
    assert cfg.optim.lr == 1e-4 and cfg.run.out_dir == "runs/y" and cfg.optim.lr_milestones == [2, 5]
    assert cfg.model.widths == [8, 16, 32, 64]


def test_lr_schedule_steps_at_milestones():
    o = OptimConfig(lr=1.0, lr_milestones=[2, 4], lr_gamma=0.5)
    assert [lr_at(o, e) for e in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_backbone_is_torchvision_r2plus1d_18():
    ours, tv = R2Plus1D(), torchvision.models.video.r2plus1d_18()
    tv_state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in tv_state.items()}
    ours.load_state_dict(tv_state)
    tv.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 4, 32, 32)
    torch.testing.assert_close(ours.eval()(x), tv.eval()(x))


def test_model_averages_clip_features_then_regresses(tmp_path):
    torch.manual_seed(0)
    m = build_model("custom", 12, 0.0, widths=[4, 8, 8, 16], layers=[1, 1, 1, 1]).eval()
    x = torch.randn(2, 3, 3, 4, 16, 16)  # (B, N, C, T, H, W)
    out = m(x)
    assert out.shape == (2, 12)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    feats = m.backbone(x.flatten(0, 1)).view(2, 3, -1).mean(1)
    torch.testing.assert_close(out, torch.nn.functional.normalize(m.regressor(feats), dim=1))
    # weights of a torchvision-style state_dict or of our checkpoint initialise the backbone
    torch.save(m.backbone.state_dict(), tmp_path / "tv.pt")
    torch.save({"model": m.state_dict()}, tmp_path / "ours.pt")
    for p in ("tv.pt", "ours.pt"):
        state = backbone_state_from(tmp_path / p)
        assert state.keys() == m.backbone.state_dict().keys()


def test_topk_accuracy_hand_computed():
    classes = np.eye(3)  # class c at axis c
    pred = np.array([[0.9, 0.1, 0.0],   # -> 0, true 0: top1 hit
                     [0.6, 0.5, 0.1],   # -> 0 then 1, true 1: top1 miss, top2 hit
                     [0.2, 0.7, 0.1]])  # -> 1, 0, 2; true 2: rank 3
    labels = np.array([0, 1, 2])
    acc = topk_accuracy(pred, labels, classes, ks=(1, 2, 5))
    assert acc == {"top1": pytest.approx(100 / 3), "top2": pytest.approx(200 / 3), "top5": 100.0}


def test_protocol1_uses_the_papers_seeded_halves():
    rng = np.random.default_rng(0)
    C = 10
    classes = rng.normal(size=(C, 5))
    classes[4] = classes[3] + 0.05 * rng.normal(size=5)  # 4 sits right next to 3
    labels = np.repeat(np.arange(C), 3)
    pred = classes[labels] + 0.01 * rng.normal(size=(len(labels), 5))
    pred[labels == 3] = classes[4]  # class 3 is confused with class 4 when both compete ...
    out = protocol1(pred, labels, classes)
    # ... which costs 3 videos only in the halves that hold both 3 and 4
    expect = []
    for i in range(10):
        np.random.seed(i)
        sub = set(np.random.permutation(C)[: C // 2].tolist())
        expect.append(100 * (1 - (3 in sub and 4 in sub) * 3 / 15))
    assert out["top1"] == pytest.approx(np.mean(expect)) and out["top1_std"] == pytest.approx(np.std(expect))


def test_checkpoints_rotate_and_sort(tmp_path):
    for step in (5, 10, 15, 120):
        save_checkpoint(tmp_path, step, {"step": step}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_0000015.pt", "ckpt_0000120.pt"]
    assert latest_checkpoint(tmp_path).name == "ckpt_0000120.pt"
    (tmp_path / "checkpoints" / ".ckpt_0000200.pt.tmp").write_bytes(b"half")  # a killed write is ignored
    assert latest_checkpoint(tmp_path).name == "ckpt_0000120.pt"


def test_load_config_takes_a_dict_without_changing_it():
    raw = {"run": {"out_dir": "runs/x"}, "data": {"train": {"shards": "s"}}, "embeddings": {"vectors": "v"}}
    cfg = load_config(raw, ["optim.lr=0.5"])
    assert cfg.optim.lr == 0.5 and "optim" not in raw
    with pytest.raises(ConfigError, match=r"^my dict with overrides .*\n  optim.lr_milstones: unknown key"):
        load_config(raw, ["optim.lr_milstones=[1]"], name="my dict")


def test_eval_loader_section_is_derived_from_the_loaders_own():
    from dali_pipelines.config import EvalDataConfig, TrainDataConfig
    from trainer.config import EVAL_FROM_TRAIN, EVAL_LOADER_FIELDS, EvalConfig

    # every loader field comes from exactly one place: the eval section, data.train, or the call
    assert sorted([*EVAL_LOADER_FIELDS, *EVAL_FROM_TRAIN, "shards", "num_clips"]) == sorted(EvalDataConfig.model_fields)
    assert {"batch_size", "prefetch", "py_workers", "device"} <= set(EVAL_LOADER_FIELDS)
    assert set(EVAL_FROM_TRAIN) <= set(TrainDataConfig.model_fields)
    for k in EVAL_LOADER_FIELDS:
        assert EvalConfig.model_fields[k].default == EvalDataConfig.model_fields[k].default
    cfg = load_config({"run": {"out_dir": "r"}, "data": {"train": {"shards": "s", "crop": 32, "resize_short": 40}},
                       "embeddings": {"vectors": "v"}, "eval": {"prefetch": 5, "sets": [{"name": "a", "shards": "t"}]}})
    data = cfg.eval.data(cfg.eval.sets[0], cfg.data.train, 3)
    assert (data.prefetch, data.crop, data.resize_short, data.num_clips, data.shards) == (5, 32, 40, 3, "t")
    with pytest.raises(ConfigError, match="eval.prefetch: Input should be greater than 0"):
        load_config({**BASE_DICT, "eval": {"prefetch": 0}})


BASE_DICT = {"run": {"out_dir": "r"}, "data": {"train": {"shards": "s"}}, "embeddings": {"vectors": "v"}}


def test_run_deterministic_sets_torch_and_cudnn_flags(monkeypatch):
    from trainer.main import set_determinism

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # restored after the test

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    try:
        set_determinism(False)
        assert not torch.are_deterministic_algorithms_enabled()
        set_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1:]


def test_ties_count_against_the_prediction():
    classes = np.eye(4)
    labels = np.array([0, 1, 2, 3])
    # a dead model: the zero vector (or any vector equally close to every class) for every video
    for pred in (np.zeros((4, 4)), np.ones((4, 4))):
        acc = topk_accuracy(pred, labels, classes, ks=(1, 3))
        assert acc["top1"] == 0.0 and acc["top3"] == 0.0  # at most chance level, never 100%
    # a tie between the true class and one other is a top-1 miss, a top-2 hit
    acc = topk_accuracy(np.array([[1.0, 1.0, 0.0, 0.0]]), np.array([0]), classes, ks=(1, 2))
    assert acc == {"top1": 0.0, "top2": 100.0}
    out = protocol1(np.zeros((8, 4)), np.repeat(np.arange(4), 2), classes)
    assert out["top1"] == 0.0


def test_non_finite_predictions_are_an_error():
    pred = np.eye(3)
    pred[1, 2] = np.nan
    with pytest.raises(ValueError, match="1 of 3 predicted embeddings are not finite"):
        topk_accuracy(pred, np.arange(3), np.eye(3))


def test_classes_with_identical_embeddings_are_reported_and_leakage_refused(capsys):
    from trainer.evaluate import TestSet, check_embeddings, coinciding
    from trainer.faults import TrainingError

    rng = np.random.default_rng(0)
    words = {w: rng.normal(size=8) for w in ("climbing", "rope", "a", "swimming")}
    mean = lambda text: np.mean([words[w] for w in text.split()], 0)  # noqa: E731 (the order-blind mean)
    test = ["climbing a rope", "a rope climbing", "swimming"]
    emb = np.stack([mean(t) for t in test])
    assert [(i, j) for i, j, _ in coinciding(emb)] == [(0, 1)]
    ts = TestSet("t", {}, test, test, emb, None, seen=False)
    check_embeddings(ts, ["swimming rope"], np.stack([mean("swimming rope")]))
    assert "classes 'climbing a rope' and 'a rope climbing' have the same embedding" in capsys.readouterr().out
    with pytest.raises(TrainingError, match=r"'a rope climbing' ~ 'rope climbing a'.*not zero-shot"):
        check_embeddings(ts, ["swimming rope", "rope climbing a"], np.stack([mean("swimming rope"),
                                                                              mean("rope climbing a")]))
    check_embeddings(TestSet("s", {}, test, test, emb, None, seen=True), ["rope climbing a"],
                     np.stack([mean("rope climbing a")]))  # seen classes: expected, no error


def test_pickle_vectors_need_format_gensim_and_trusted(tmp_path):
    import pickle

    from trainer.embeddings import class_embeddings, embeddings_for

    class Boom:  # what a malicious "vectors.bin" would carry: code run by pickle.load
        def __reduce__(self):
            return (Path(tmp_path / "pwned").write_text, ("ran",))

    bad = tmp_path / "vectors.bin"
    bad.write_bytes(pickle.dumps(Boom(), protocol=4))
    assert bad.read_bytes()[:1] == b"\x80"
    for kw in ({}, {"fmt": "gensim"}, {"fmt": "auto", "trusted": True}):
        with pytest.raises(ValueError, match="is a pickle .* embeddings.format: gensim and embeddings.trusted: true"):
            class_embeddings(["a b"], bad, None, **kw)
    with pytest.raises(ValueError, match="is a pickle"):
        embeddings_for(load_config({**BASE_DICT, "embeddings": {"vectors": str(bad)}}).embeddings, ["a b"])
    assert not (tmp_path / "pwned").exists()  # nothing of the file ran
    cfg = load_config({**BASE_DICT, "embeddings": {"vectors": str(bad), "format": "gensim", "trusted": True}})
    assert cfg.embeddings.format == "gensim" and cfg.embeddings.trusted


def test_checkpoints_sort_by_step_number_and_skip_an_unreadable_newest(tmp_path, capsys):
    from trainer.checkpoint import newest_readable

    for step in (9999999, 10000000):
        save_checkpoint(tmp_path, step, {"step": step}, keep_last=5)
    assert latest_checkpoint(tmp_path).name == "ckpt_10000000.pt"  # not by text: "ckpt_1..." < "ckpt_9..."
    newest = latest_checkpoint(tmp_path)
    newest.write_bytes(newest.read_bytes()[:40])  # a truncated copy
    path, ckpt = newest_readable(tmp_path)
    assert path.name == "ckpt_9999999.pt" and ckpt["step"] == 9999999
    assert "ckpt_10000000.pt cannot be read" in capsys.readouterr().err
    assert (tmp_path / "checkpoints" / "ckpt_10000000.pt.unreadable").exists()  # kept, out of the rotation
    assert latest_checkpoint(tmp_path).name == "ckpt_9999999.pt"


def test_non_finite_weights_are_never_saved(tmp_path):
    from trainer.faults import TrainingError

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, 1, {"model": model.state_dict(), "optimizer": opt.state_dict()}, keep_last=3)
    with torch.no_grad():
        model.bias[0] = float("inf")
    with pytest.raises(TrainingError, match=r"not saving checkpoint of step 2: 1 tensors are not finite \(\['model.bias'\]\)"):
        save_checkpoint(tmp_path, 2, {"model": model.state_dict(), "optimizer": opt.state_dict()}, keep_last=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_0000001.pt"]


def test_resume_refuses_another_runs_config_and_lists_the_diff():
    from trainer.config import check_resume

    stored = load_config(BASE_DICT).model_dump(mode="json")
    same_but_allowed = load_config(BASE_DICT, ["eval.every_epochs=2", "run.log_every=3", "data.train.py_workers=2",
                                               "run.out_dir=elsewhere"])
    assert check_resume(stored, same_but_allowed, "ckpt") == []
    with pytest.raises(ConfigError) as e:
        check_resume(stored, load_config(BASE_DICT, ["optim.lr=0.02", "data.train.crop=96"]), "ckpt_0000010.pt")
    msg = str(e.value)
    assert "optim.lr: 0.001 -> 0.02" in msg and "data.train.crop: 112 -> 96" in msg and "ckpt_0000010.pt" in msg
    assert "another run.out_dir" in msg and "run.resume=force" in msg and "eval.every_epochs" not in msg.split("\n")[1]
    forced = load_config(BASE_DICT, ["optim.lr=0.02", "run.resume=force"])
    assert check_resume(stored, forced, "ckpt") == ["optim.lr: 0.001 -> 0.02"]
    old = {k: v for k, v in stored.items()}
    old["optim"] = {k: v for k, v in stored["optim"].items() if k != "nonfinite_grads"}  # from an older version
    assert check_resume(old, load_config(BASE_DICT), "ckpt") == []
    assert check_resume(None, forced, "empty folder") == []


def test_logs_cut_back_to_the_checkpoint_and_torn_lines(tmp_path, capsys):
    import json

    from trainer.report import final_rows
    from trainer.runlog import read_jsonl, resume_logs

    (tmp_path / "samples").mkdir()
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)) + '{"st')
    (tmp_path / "samples" / "rank1.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (3, 4, 5)))
    row = {"dataset": "u", "epoch": 1, "clips": 1, "protocol": "all_classes"}
    (tmp_path / "metrics.jsonl").write_text(json.dumps({**row, "step": 2}) + "\n" + json.dumps({**row, "step": 4}) + "\n"
                                            + json.dumps({**row, "step": 5}) + "\n" + '{"dataset": "u", "ep')
    assert len(final_rows(tmp_path)) == 3 and "torn last line" in capsys.readouterr().err  # report tolerates it
    resume_logs(tmp_path, 0, 4, redo_eval=False)
    resume_logs(tmp_path, 1, 4, redo_eval=False)
    assert [r["step"] for r in read_jsonl(tmp_path / "train_log.jsonl")] == [1, 2, 3, 4]
    assert [r["step"] for r in read_jsonl(tmp_path / "samples" / "rank1.jsonl")] == [3, 4]
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [2, 4]
    resume_logs(tmp_path, 0, 4, redo_eval=True)  # the evaluation at step 4 runs again: its lines go
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [2]
    (tmp_path / "train_log.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_jsonl(tmp_path / "train_log.jsonl")


SIGNALS_SCRIPT = r"""
import os, signal, sys, time
from trainer.faults import Interrupted, Signals
s = Signals().install()
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    print("not interrupted")
except Interrupted as e:
    print("interrupted", e.signum)
s.signum = None
with s.deferred():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)
    print("deferred", s.signum, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # the second: exit at once
    time.sleep(5)
    print("still running")
"""


def test_signals_interrupt_outside_the_step_loop_and_a_second_one_exits():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", SIGNALS_SCRIPT], capture_output=True, text=True, timeout=60)
    assert r.stdout.split("\n")[:2] == [f"interrupted {int(signal.SIGTERM)}", f"deferred {int(signal.SIGINT)}"]
    assert "still running" not in r.stdout and r.returncode == 128 + signal.SIGTERM
    assert "second signal (SIGTERM): exiting now" in r.stderr


ORPHAN_SCRIPT = r"""
import os, signal, sys, time
from trainer.faults import Signals
Signals().install()
child = os.fork()
if child == 0:  # a loader's reader process
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the trainer dies without cleaning up
"""


def test_forked_readers_exit_when_the_trainer_is_killed():
    import subprocess
    import sys
    import time

    import psutil

    r = subprocess.run([sys.executable, "-c", ORPHAN_SCRIPT], capture_output=True, text=True, timeout=30)
    child = int(r.stdout.split()[0])  # run() returned: no orphan held the pipes for its 60 s
    deadline = time.time() + 10
    while time.time() < deadline and psutil.pid_exists(child) and psutil.Process(child).status() != "zombie":
        time.sleep(0.1)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"


NODE_LOCAL_SCRIPT = r"""
import os, sys
from pathlib import Path
import torch.distributed as dist
from trainer.checkpoint import resume_point
from trainer.faults import TrainingError
rank = int(os.environ["RANK"])
os.chdir(sys.argv[1] + f"/node{rank}")  # each rank its own node-local run folder, same relative run.out_dir
dist.init_process_group("gloo")
try:
    path, ckpt = resume_point(Path("run"), rank)
    print(f"@@rank {rank} resumes {path} step {ckpt['step']}", flush=True)
except TrainingError as e:
    print(f"@@rank {rank} refused: {e}", flush=True)
dist.destroy_process_group()
"""


@pytest.mark.slow  # 10-30 s: outside the default run's 10-minute budget; `make test-all` runs it
def test_every_rank_resumes_rank_0s_checkpoint_or_all_refuse(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "resume.py"
    script.write_text(NODE_LOCAL_SCRIPT)
    save_checkpoint(tmp_path / "node0" / "run", 5, {"step": 5}, keep_last=3)
    save_checkpoint(tmp_path / "node0" / "run", 3, {"step": 3}, keep_last=3)
    (tmp_path / "node1" / "run").mkdir(parents=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)]

    def ranks():
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        # each rank's one line, wherever it landed (the ranks share torchrun's stdout pipe)
        got = sorted(m.group(1) for m in re.finditer(r"@@([^@\n]*)", r.stdout))
        assert len(got) == 2, f"stdout: {r.stdout!r}\nstderr: {r.stderr[-2000:]}"
        return got

    # node 1 lacks the file: both ranks refuse, naming rank 1 (no rank goes on alone to hang later)
    out = ranks()
    assert len(out) == 2 and all("refused: rank 0 resumes from run/checkpoints/ckpt_0000005.pt (step 5)" in x
                                 for x in out) and "rank 1 cannot use: FileNotFoundError" in out[0]
    # node 1 holds another step under that name (its own older run): refused too
    save_checkpoint(tmp_path / "node1" / "run", 5, {"step": 4}, keep_last=3)
    assert all("rank 1 cannot use: holds step 4, not 5" in x for x in ranks())
    # node 1 has rank 0's newest (its own newest would be ckpt 7: rank 0 decides)
    save_checkpoint(tmp_path / "node1" / "run", 5, {"step": 5}, keep_last=3)
    save_checkpoint(tmp_path / "node1" / "run", 7, {"step": 7}, keep_last=3)
    assert ranks() == ["rank 0 resumes run/checkpoints/ckpt_0000005.pt step 5",
                       "rank 1 resumes run/checkpoints/ckpt_0000005.pt step 5"]
