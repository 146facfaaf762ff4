"""Trainer pieces that need no shards: configs, the LR schedule, the model, the accuracy functions."""

from __future__ import annotations

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
