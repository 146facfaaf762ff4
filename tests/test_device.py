"""The GPU path's CPU-checkable parts: no CUDA driver initialisation where DALI forks later, CPU
tests pinned to the CPU, and the `decode_device` option's rules and graph construction."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from nvidia.dali import Pipeline, fn

from conftest import cuda_device_count
from dali_pipelines.config import EvalDataConfig, TrainDataConfig
from dali_pipelines.decode import VideoDecode
from dali_pipelines.graphs import TRAIN_INPUTS, TRAIN_OUTPUTS, decode_video, train_graph
from dali_pipelines.loader import resolve_decode_device


@pytest.fixture
def gpu_host_without_driver_init(monkeypatch):
    """Pretend NVML sees 2 GPUs, and fail loudly on anything that would initialise the driver."""
    def init(*_):
        raise AssertionError("initialised the CUDA driver (cudaGetDeviceCount)")

    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: 2)
    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", init)
    monkeypatch.setattr(torch.cuda, "is_available", init)


def test_conftest_counts_gpus_without_initialising_cuda(gpu_host_without_driver_init):
    assert cuda_device_count() == 2


def test_cpu_tests_and_their_subprocesses_see_no_gpu():
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    r = subprocess.run([sys.executable, "-c", "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']))"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "''"


def test_decode_device_rules():
    assert resolve_decode_device("auto", "gpu") == "gpu"
    assert resolve_decode_device("cpu", "gpu") == "cpu"
    assert resolve_decode_device("gpu", "gpu") == "gpu"
    assert resolve_decode_device("auto", "cpu") == resolve_decode_device("cpu", "cpu") == "cpu"
    with pytest.raises(ValueError, match="decode_device 'gpu' needs the graph on the GPU"):
        resolve_decode_device("gpu", "cpu")  # device auto on a CPU rank
    for section in (TrainDataConfig, EvalDataConfig):
        assert section(shards="x").decode_device == "auto"
        with pytest.raises(ValueError, match="decode_device 'gpu' needs device 'gpu' or 'auto'"):
            section(shards="x", device="cpu", decode_device="gpu")


@pytest.mark.parametrize("decode_device,decoder_on", [("cpu", "cpu"), ("gpu", "gpu")])
def test_gpu_graph_places_the_decoder(decode_device, decoder_on):
    """Graph definition needs no GPU (building does): the decoder runs where decode_device says and
    the frames end on the GPU either way."""
    with Pipeline(batch_size=2, num_threads=1, device_id=0):
        encoded = fn.external_source(name="encoded")
        frames = decode_video(encoded, "gpu", decode_device, start_frame=0, sequence_length=4, stride=1)
    assert frames.device == "gpu"
    assert frames.source.outputs[0].device == decoder_on  # the decoder's own output
    with Pipeline(batch_size=2, num_threads=1, device_id=None):
        frames = decode_video(fn.external_source(name="encoded"), "cpu", decode_device)
    assert frames.device == "cpu"  # a CPU graph ignores decode_device


class _NamesOnly:
    """Stands in for a TrainSource at graph definition (the graph reads only `names`, `outputs`
    and `decode`)."""

    names = TRAIN_INPUTS[:-1]
    outputs = TRAIN_OUTPUTS
    decode = VideoDecode()  # the video formats' decode step (dali_pipelines/decode.py)

    def __call__(self, sample_info):  # never called: the pipeline is not built
        raise AssertionError


def test_train_graph_with_cpu_decode_defines_gpu_outputs():
    """The whole training graph, defined for a GPU with CPU decoding: the image outputs are on
    the GPU, the source's numbers stay on the CPU."""
    with Pipeline(batch_size=2, num_threads=1, device_id=0):
        outs = train_graph.__wrapped__(_NamesOnly(), device="gpu", decode_device="cpu", clip_len=4,
                                       stride=1, crop=32, py_workers=0,
                                       prefetch=2)
    devices = dict(zip(TRAIN_OUTPUTS, (o.device for o in outs)))
    assert devices == {"clips": "gpu", "label": "cpu", "row": "cpu",
                       "start": "cpu", "crop": "cpu", "flip": "cpu"}
    assert np.all([o is not None for o in outs])


def test_bf16_autocast_keeps_the_unit_norm_in_float32():
    """The CUDA setting (bf16 autocast) exercised with CPU autocast: the embedding comes out float32
    and unit-norm to float32 precision."""
    from trainer.model import build_model

    torch.manual_seed(0)
    model = build_model("custom", 16, 0.0, widths=[4, 4, 8, 8], layers=[1, 1, 1, 1]).eval()
    clips = torch.randn(3, 2, 3, 4, 16, 16)  # (B, N, C, T, H, W)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pred = model(clips)
    assert pred.dtype == torch.float32
    assert torch.allclose(pred.norm(dim=1), torch.ones(3), atol=1e-6)


def test_rank_device_is_named_without_initialising_cuda(gpu_host_without_driver_init):
    from trainer.distributed import device_name

    assert device_name(0) == "cuda:0" and device_name(1) == "cuda:1"
    with pytest.raises(RuntimeError, match=r"local rank 2, but 2 GPU\(s\) visible .*--nproc_per_node"):
        device_name(2)  # e.g. a 3-rank torchrun on a 2-GPU node
    assert not torch.cuda.is_initialized()


def test_cpu_ranks_and_their_process_group():
    from datetime import timedelta

    from trainer.distributed import device_name, process_group_options

    assert device_name(1) == "cpu"  # CUDA_VISIBLE_DEVICES="" (this machine has no GPU anyway)
    gloo = process_group_options(torch.device("cpu"))
    assert gloo["backend"] == "gloo" and "device_id" not in gloo
    nccl = process_group_options(torch.device("cuda", 1))  # the GPU branch, constructed only
    assert nccl["backend"] == "nccl" and nccl["device_id"] == torch.device("cuda", 1)
    assert nccl["timeout"] == gloo["timeout"] == timedelta(minutes=30)


def test_cudnn_autotunes_unless_deterministic():
    from trainer.main import set_determinism

    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        set_determinism(False)
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before


def test_rng_state_does_not_initialise_cuda(gpu_host_without_driver_init):
    from trainer.checkpoint import rng_state, set_rng_state

    state = rng_state()  # torch.cuda.is_available() would raise here
    assert "cuda" not in state and not torch.cuda.is_initialized()
    set_rng_state(state)
