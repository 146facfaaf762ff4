"""trainer.import_checkpoint on a file laid out exactly like the authors' release."""

from __future__ import annotations

import argparse
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.video import r2plus1d_18

from trainer.checkpoint import load_checkpoint
from trainer.import_checkpoint import import_checkpoint, main
from trainer.model import build_model


class AuthorsModel(nn.Module):
    """The authors' network.py ResNet18: VideoResNet children without fc, regressor, dropout."""

    def __init__(self):
        super().__init__()
        net = r2plus1d_18()
        self.model = nn.Sequential(*list(net.children())[:-1])
        self.regressor = nn.Linear(512, 300)
        self.dropout = nn.Dropout(0.05)

    def forward(self, x):  # (B, C, T, H, W)
        return F.normalize(self.regressor(self.dropout(self.model(x).flatten(1))))


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    torch.manual_seed(0)
    src_model = AuthorsModel().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a misplaced buffer shows
        for m in src_model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = {"module." + k: v for k, v in src_model.state_dict().items()}  # DataParallel's prefix
    state["module.classifier.weight"] = torch.randn(7, 300)  # an extra dense layer
    state["module.classifier.bias"] = torch.randn(7)
    state["module.mystery"] = torch.randn(3, 4)  # an unknown key
    opt = argparse.Namespace(network="r2plus1d_18", lr=1e-3, bs=22, dataset="kinetics2both", n_epochs=150)
    path = tmp_path_factory.mktemp("authors") / "checkpoint.pth.tar"
    torch.save({"state_dict": state, "opt": opt, "accuracy": 0.378}, path)
    return src_model, path


def test_import_gives_the_same_outputs(released, tmp_path):
    src_model, path = released
    out = io.StringIO()
    report = import_checkpoint(path, tmp_path / "ours.pt", out=out)
    text = out.getvalue()
    ckpt = load_checkpoint(tmp_path / "ours.pt")  # weights_only=True, as trainer.main loads it
    assert ckpt["step"] == 0 and ckpt["epoch"] == 0 and ckpt["imported_from"]["opt"]["bs"] == 22
    model = build_model("r2plus1d_18", 300, 0.05)
    model.load_state_dict(ckpt["model"])
    model.eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), src_model(x), atol=1e-5)
    # every source tensor is placed or listed
    assert {u[0] for u in report["unplaced"]} == {"classifier.weight", "classifier.bias", "mystery"}
    assert "NOT PLACED: mystery [3, 4]" in text and "NOT PLACED: classifier.weight [7, 300]" in text
    assert "extra dense layer: classifier = Linear(300 -> 7)" in text
    assert "network = 'r2plus1d_18'" in text  # the opt summary
    assert "extra_heads" not in ckpt
    # the paper's training classes travel with it (evaluation without the Kinetics shards)
    classes = ckpt["train_classes"]
    assert len(classes) == 664 and [c["label"] for c in classes] == list(range(664))
    assert {"abseiling", "acting in play"} <= {c["text"] for c in classes}
    assert "playing guitar" not in {c["name"] for c in classes}
    assert "archery" not in {c["name"] for c in classes}  # one of the 36 excluded (too close to UCF101)


def test_keep_extra_head_and_cli(released, tmp_path, capsys):
    _, path = released
    names = tmp_path / "classes.txt"
    names.write_text("# my run\nplaying guitar\nabseiling\n")
    assert main([str(path), str(tmp_path / "ours.pt"), "--keep-extra-head", "--train-classes", str(names)]) == 0
    ckpt = load_checkpoint(tmp_path / "ours.pt")
    assert ckpt["extra_heads"]["classifier"]["weight"].shape == (7, 300)
    assert ckpt["train_classes"] == [{"label": 0, "name": "abseiling", "text": "abseiling"},
                                     {"label": 1, "name": "playing guitar", "text": "playing guitar"}]
    assert "NOT PLACED: mystery" in capsys.readouterr().out


def test_unsafe_file_needs_trusted(tmp_path):
    from fractions import Fraction  # a class the safe unpickler does not allow

    path = tmp_path / "odd.pth.tar"
    torch.save({"state_dict": {}, "opt": Fraction(1, 3)}, path)
    with pytest.raises(SystemExit, match="--trusted"):
        import_checkpoint(path, tmp_path / "x.pt")
