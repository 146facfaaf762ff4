"""The paper's model: an R(2+1)D backbone -> 512-d per clip, mean over a video's clips, then
dropout -> Linear -> L2 normalise, regressing the class name's word vector.

The backbone is built from torchvision's own R(2+1)D blocks (`BasicBlock`, `Conv2Plus1D`) with the
same module names as torchvision's `VideoResNet` (stem, layer1..layer4, avgpool), so:
- `r2plus1d_18` has exactly torchvision's `r2plus1d_18` state_dict (its weights load unchanged),
- narrower variants (`widths`, `layers`) use the same code for the CPU demo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D

BACKBONES = {
    # name: (widths of layer1..4, blocks per layer)
    "r2plus1d_18": ((64, 128, 256, 512), (2, 2, 2, 2)),
    "r2plus1d_10": ((64, 128, 256, 512), (1, 1, 1, 1)),
}


class R2Plus1D(nn.Module):
    """torchvision's VideoResNet layout with configurable widths; outputs (B, widths[-1]) features."""

    def __init__(self, widths=(64, 128, 256, 512), layers=(2, 2, 2, 2)):
        super().__init__()
        w0 = widths[0]
        mid = max(1, round(45 * w0 / 64))  # torchvision's stem uses 45 middle channels for 64
        self.stem = nn.Sequential(
            nn.Conv3d(3, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, w0, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(w0),
            nn.ReLU(inplace=True),
        )
        inplanes = w0
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(
                    nn.Conv3d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm3d(planes),
                )
            mods = [BasicBlock(inplanes, planes, Conv2Plus1D, stride, downsample)]
            mods += [BasicBlock(planes, planes, Conv2Plus1D) for _ in range(1, blocks)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*mods))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.out_dim = inplanes
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, C, T, H, W)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)  # (B, D)


class ZeroShotModel(nn.Module):
    """Backbone features averaged over clips -> dropout -> Linear -> unit-norm embedding."""

    def __init__(self, backbone: R2Plus1D, embed_dim: int = 300, dropout: float = 0.05):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.regressor = nn.Linear(backbone.out_dim, embed_dim)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """clips: (B, C, T, H, W) one clip per video, or (B, N, C, T, H, W) N clips per video.
        Returns (B, embed_dim) unit vectors."""
        if clips.dim() == 5:
            clips = clips.unsqueeze(1)
        b, n = clips.shape[:2]
        feats = self.backbone(clips.flatten(0, 1))  # (B*N, D)
        feats = feats.view(b, n, -1).float().mean(1)  # (B, D): the paper averages features, not predictions
        # The unit norm in float32 under bf16 autocast: a bf16 norm is off by ~1e-2, which the
        # MSE to the unit class vectors would train on.
        return F.normalize(self.regressor(self.dropout(feats)).float(), dim=1)


def build_model(backbone: str, embed_dim: int, dropout: float, widths=None, layers=None) -> ZeroShotModel:
    """`backbone` names an entry of BACKBONES, or `custom` with explicit widths and layers."""
    if backbone == "custom":
        if not widths or not layers:
            raise ValueError("model.backbone 'custom' needs model.widths and model.layers")
    else:
        widths, layers = BACKBONES[backbone]
    return ZeroShotModel(R2Plus1D(tuple(widths), tuple(layers)), embed_dim, dropout)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """`optim.amp` on this device: bf16 autocast on CUDA, None (float32) elsewhere."""
    return torch.bfloat16 if amp == "bf16" and device.type == "cuda" else None
