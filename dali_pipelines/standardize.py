"""The loaders' last step: uint8 clips from the DALI graphs -> float32 standardized clips, in torch
on the batch's device.

'per_frame' is tf.image.per_image_standardization of every frame, the paper's transform: on x / 255,
`(x - mean) / max(std, 1 / sqrt(n))` over the frame's n = C*H*W values (population std).
'mean_std': `(x / 255 - KINETICS_MEAN) / KINETICS_STD` per channel.

Why here and not in the graph: DALI's CPU reductions and arithmetic cost more per clip than these
torch/numpy passes (benchmarks/RESULTS.md: `benchmarks.graph_ops`), and the uint8 batch is a
quarter of the float one to copy out of the pipeline.
"""

from __future__ import annotations

import numpy as np
import torch

# Kinetics statistics on x / 255 (docs/DESIGN.md, the paper's transforms), RGB order.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
STANDARDIZATIONS = ("per_frame", "mean_std")


def frame_totals(x: torch.Tensor) -> torch.Tensor:
    """Exact sums of each frame's values: uint8 (..., C, T, H, W) -> float64 (..., T). numpy's
    uint8 -> uint32 sum on the CPU (torch's integer sums of uint8 are 5-40x slower there)."""
    n = x.shape[-4] * x.shape[-2] * x.shape[-1]
    if x.is_cuda or 255 * n >= 1 << 32:
        return x.sum(dim=(-4, -2, -1), dtype=torch.float64)
    return torch.from_numpy(x.numpy().sum(axis=(-4, -2, -1), dtype=np.uint32).astype(np.float64))


def standardize(x: torch.Tensor, how: str) -> torch.Tensor:
    """uint8 clips (..., C, T, H, W) (any strides: a permuted view is laid out by the same copy)
    -> contiguous float32 standardized clips of that shape.

    'per_frame' takes the statistics about each frame's integer centre c (its mean, rounded): the
    float copy holds x - c, so the float32 sum of squares (one batched matmul) rounds relative to
    n * var, not to n * mean^2 (the one-pass E[x^2] - mean^2 loses a near-flat bright frame).
    """
    *lead, C, T, H, W = x.shape
    n = C * H * W
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    if how == "per_frame":
        total = frame_totals(x)  # (..., T)
        centre = torch.floor(total / n + 0.5)
        out.copy_(x).sub_(centre.float()[..., None, :, None, None])  # layout, float, centre: one pass + one
        d = total / n - centre  # mean - centre, in [-0.5, 0.5]
        v = out.view(-1, 1, H * W)
        sq = torch.bmm(v, v.transpose(1, 2)).view(*lead, C, T).double().sum(-2)  # sum of (x - c)^2
        std = (sq / n - d * d).clamp_(min=0).sqrt_()
        # (x/255 - m/255) / max(s/255, f) == (x - m) / max(s, 255 f); tf's floor f = 1/sqrt(n) keeps a
        # flat frame finite (it becomes all zeros). out holds x - c: (x - m) * scale = out * scale - d * scale
        scale = 1.0 / torch.clamp(std, min=255.0 / n ** 0.5)
        shift = -d * scale
        scale, shift = (t.float()[..., None, :, None, None] for t in (scale, shift))
    elif how == "mean_std":
        out.copy_(x)
        # (x/255 - mean) / std == x * (1 / (255 std)) - mean / std, per channel
        std, mean = np.array(KINETICS_STD, np.float64), np.array(KINETICS_MEAN, np.float64)
        scale = torch.tensor(1.0 / (255.0 * std), dtype=torch.float32, device=x.device).view(C, 1, 1, 1)
        shift = torch.tensor(-mean / std, dtype=torch.float32, device=x.device).view(C, 1, 1, 1)
    else:
        raise ValueError(f"unknown standardization {how!r}; one of {STANDARDIZATIONS}")
    return out.mul_(scale).add_(shift)
