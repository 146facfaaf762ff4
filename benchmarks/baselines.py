"""The peers our DALI graph is measured against: the loaders a PyTorch user would write.

Every peer does the DALI graph's work per clip (`dali_pipelines.sampler.TrainSampler` draws the
window, crop and flip; one pread of the sample's bytes; decode the window; 112 crop, flip, per-frame
standardization, float32 (C, T, H, W); batches):

- `dataloader_decord`, `dataloader_pyav`, `dataloader_torchcodec`: a torch DataLoader whose worker
  processes decode with decord, PyAV (seek to the keyframe before the window, decode forward, convert
  only the window) or torchcodec (`VideoDecoder` on the bytes; seek mode and frame call set by
  `--torchcodec`);
- `spdl`: SPDL's own thread-pool pipeline (`spdl.pipeline.PipelineBuilder`) decoding with
  `spdl.io` (demux the sample, `sample_decode_video` of the window's frame indices).

They read webm/mp4 samples (decord cannot open IVF; the harness gives them a webm twin of an ivf
build, with the same keyframes) and all seek to the keyframe at or before the window.

On a `--codec jpeg` (jpeg_frames) build of the same videos, the JPEG peers read the window's bytes
(one pread from its first frame to the end of its last, at the table's frame offsets, as our source
does) and decode its 16 JPEGs: `dataloader_tv_jpeg` (torchvision.io.decode_jpeg, libjpeg-turbo),
`dataloader_pil_jpeg` (Pillow) in a torch DataLoader, and `spdl_jpeg` (SPDL's thread-pool pipeline,
`spdl.io.load_image_batch`, FFmpeg's JPEG decoder).
"""

from __future__ import annotations

import io
import itertools

import numpy as np

CLIP_LEN, CROP = 16, 112
DATALOADER_DECODERS = {"dataloader_decord": "decord", "dataloader_pyav": "pyav",
                       "dataloader_torchcodec": "torchcodec"}
PEERS = tuple(DATALOADER_DECODERS) + ("spdl",)
JPEG_DATALOADER_DECODERS = {"dataloader_tv_jpeg": "torchvision_jpeg", "dataloader_pil_jpeg": "pil_jpeg"}
JPEG_PEERS = tuple(JPEG_DATALOADER_DECODERS) + ("spdl_jpeg",)  # peers on jpeg_frames shards
# torchcodec's two knobs: "<seek_mode>,<method>"; seek_mode approximate|exact, method at
# (get_frames_at(indices)) | range (get_frames_in_range(start, stop)). The default is the best
# of the four measured in benchmarks/RESULTS.md.
TORCHCODEC_DEFAULT = "approximate,range"
DECODER_MODULES = {"decord": "decord", "pyav": "av", "torchcodec": "torchcodec.decoders", "spdl": "spdl.io",
                   "torchvision_jpeg": "torchvision.io", "pil_jpeg": "PIL.Image", "spdl_jpeg": "spdl.io"}
# What to install where a peer's library is missing (the benchmark prints it and skips the peer).
INSTALL_HINT = {
    "decord": "pip install decord",
    "torchcodec": "pip install torchcodec==0.17.0 (needs the FFmpeg shared libraries: apt-get install ffmpeg)",
    "spdl": "pip install spdl==0.8.0",
    "pyav": "pip install av",
    "torchvision_jpeg": "pip install torchvision",
    "pil_jpeg": "pip install pillow",
    "spdl_jpeg": "pip install spdl==0.8.0",
}


def standardize_clip(frames: np.ndarray, crop_x: int, crop_y: int, flip: bool, crop: int = CROP):
    """The peers' augment, same as the DALI graph's: (T, H, W, C) uint8 -> (C, T, crop, crop)
    float32 with per-frame standardization (tf.image.per_image_standardization)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames[:, crop_y: crop_y + crop, crop_x: crop_x + crop]))
    if flip:
        x = x.flip(2)  # (T, H, W, C): W is dim 2
    x = x.float().mul_(1.0 / 255.0)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (T, 1, 1, 1)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    x = (x - mean) / std.clamp_min(float(1.0 / np.sqrt(crop * crop * 3)))
    return x.permute(3, 0, 1, 2).contiguous()  # (T,H,W,C) -> (C,T,H,W)


def _pad_edge(frames: list[np.ndarray], n: int) -> np.ndarray:
    """Repeat the last frame up to n frames (DALI's pad_mode='edge' for short videos)."""
    frames = frames + [frames[-1]] * (n - len(frames))
    return np.stack(frames)  # (T, H, W, C)


def decode_window_decord(data: bytes, start: int, n: int) -> np.ndarray:
    import decord

    vr = decord.VideoReader(io.BytesIO(data), num_threads=1)
    idx = [min(start + i, len(vr) - 1) for i in range(n)]
    return vr.get_batch(idx).asnumpy()  # (T, H, W, C)


def decode_window_pyav(data: bytes, start: int, n: int) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        fps = float(stream.average_rate or stream.guessed_rate)
        t0 = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        if start > 0:  # lands on the keyframe at or before the window
            container.seek(int(round((t0 + start / fps) / stream.time_base)), stream=stream,
                           backward=True, any_frame=False)
        frames = []
        for frame in container.decode(stream):
            if int(round((frame.time - t0) * fps)) < start:
                continue  # decoded but not converted
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == n:
                break
    return _pad_edge(frames, n)


def decode_window_torchcodec(data: bytes, start: int, n: int, options: str = TORCHCODEC_DEFAULT,
                             num_frames: int | None = None) -> np.ndarray:
    """torchcodec's window: `options` is "<seek_mode>,<method>" (see TORCHCODEC_DEFAULT).

    `num_frames` (the shard table's count) clamps the window of a short video; without it the
    decoder's own count is used (exact in "exact" mode, from the container in "approximate").
    """
    from torchcodec.decoders import VideoDecoder

    seek_mode, method = options.split(",")
    dec = VideoDecoder(data, seek_mode=seek_mode, num_ffmpeg_threads=1, dimension_order="NHWC")
    nf = num_frames if num_frames is not None else len(dec)
    if method == "range":
        stop = min(start + n, nf)
        frames = dec.get_frames_in_range(start, stop).data.numpy()  # (T', H, W, C)
        return frames if len(frames) == n else _pad_edge(list(frames), n)
    idx = [min(start + i, nf - 1) for i in range(n)]
    return dec.get_frames_at(idx).data.numpy()  # (T, H, W, C)


def decode_window_spdl(data: bytes, start: int, n: int, num_frames: int | None = None) -> np.ndarray:
    """SPDL's window: demux the sample's packets, then `sample_decode_video` decodes from the
    keyframe before the first index and converts only the requested frames."""
    import spdl.io

    packets = spdl.io.demux_video(data)
    nf = num_frames if num_frames is not None else len(packets)
    idx = [min(start + i, nf - 1) for i in range(n)]
    uniq = sorted(set(idx))  # a short video repeats its last frame: decode it once
    frames = spdl.io.sample_decode_video(packets, uniq,
                                         filter_desc=spdl.io.get_video_filter_desc(pix_fmt="rgb24"))
    arr = spdl.io.to_numpy(spdl.io.convert_frames(frames))  # (T', H, W, C)
    return arr if len(uniq) == n else arr[[uniq.index(i) for i in idx]]


def decode_window(decoder: str, data: bytes, start: int, n: int, num_frames: int | None = None,
                  torchcodec: str = TORCHCODEC_DEFAULT) -> np.ndarray:
    """(n, H, W, C) uint8 RGB frames start.. of an encoded sample with the named decoder."""
    if decoder == "decord":
        return decode_window_decord(data, start, n)
    if decoder == "pyav":
        return decode_window_pyav(data, start, n)
    if decoder == "torchcodec":
        return decode_window_torchcodec(data, start, n, torchcodec, num_frames)
    if decoder == "spdl":
        return decode_window_spdl(data, start, n, num_frames)
    raise ValueError(f"unknown decoder {decoder!r}; choose from decord, pyav, torchcodec, spdl")


def window_jpegs(table, reader, row: int, start: int, n: int) -> list[bytes]:
    """The JPEGs of frames start .. start + n - 1 of a jpeg_frames sample (one read; past the
    end the last frame again, as the DALI graph's edge padding)."""
    c = table.cut(row, start, n)
    data = reader.read(row, c.begin, c.end)
    b = table.format.frame_bounds(table, row, c)
    return [data[b[i]:b[i + 1]] for i in np.minimum(np.arange(n), c.num_frames - 1)]


def decode_jpegs(decoder: str, jpegs: list[bytes]) -> np.ndarray:
    """(n, H, W, C) uint8 RGB of n JPEGs with the named decoder."""
    if decoder == "torchvision_jpeg":
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        imgs = decode_jpeg([torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs], mode=ImageReadMode.RGB)
        return torch.stack(imgs).permute(0, 2, 3, 1).numpy()
    if decoder == "pil_jpeg":
        from PIL import Image

        return np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs])
    if decoder == "spdl_jpeg":
        import spdl.io

        return spdl.io.to_numpy(spdl.io.load_image_batch(jpegs, width=None, height=None, pix_fmt="rgb24"))
    raise ValueError(f"unknown JPEG decoder {decoder!r}")


def decoder_of(peer: str) -> str:
    return {**DATALOADER_DECODERS, **JPEG_DATALOADER_DECODERS}.get(peer, peer)


class ClipDataset:
    """Map-style dataset: sample number n -> the clip `TrainSampler.draw(n)` describes.

    Reads the encoded member with one pread at the shard table's offset (like the DALI source),
    decodes the window with `decoder` (see `decode_window`) and augments in torch.
    """

    def __init__(self, table, sampler, decoder: str, torchcodec: str = TORCHCODEC_DEFAULT):
        from sharding.reader import SampleReader

        self.reader = SampleReader(table)
        self.table, self.num_frames = table, table.columns["num_frames"]
        self.sampler, self.decoder, self.torchcodec = sampler, decoder, torchcodec

    def __len__(self) -> int:
        return 10 ** 9  # an endless stream; the benchmark stops it

    def __getitem__(self, n: int) -> dict:
        import torch

        d = self.sampler.draw(n)
        if self.decoder.endswith("_jpeg"):
            frames = decode_jpegs(self.decoder, window_jpegs(self.table, self.reader, d.row, d.start, CLIP_LEN))
        else:
            data = self.reader.read(d.row)
            frames = decode_window(self.decoder, data, d.start, CLIP_LEN, int(self.num_frames[d.row]),
                                   self.torchcodec)
        return {"clips": standardize_clip(frames, d.crop_x, d.crop_y, d.flip),
                "labels": torch.tensor(d.label), "index": torch.tensor(d.row),
                "start": torch.tensor(d.start)}


def train_sampler(table, batch_size: int, seed: int):
    from dali_pipelines.sampler import TrainSampler

    return TrainSampler(table, batch_size=batch_size, seed=seed, clip_len=CLIP_LEN, crop=CROP)


def keep(t) -> np.ndarray:
    """A copy of a small batch tensor that the benchmark keeps for the whole run. Keeping the
    loader's own tensors (numpy views) pins glibc heap pages between the per-batch clip buffers:
    peak RSS then grows with the run (benchmarks/RESULTS.md), which is not the loader's memory."""
    return np.array(t.cpu().numpy(), copy=True)


def batches_dataloader(cfg: dict, decoder: str):
    """Endless (clips, rows, starts) batches from a torch DataLoader with `cfg['workers']` workers."""
    import torch
    from torch.utils.data import DataLoader

    from sharding.reader import load_shards

    table = load_shards(cfg["shards"], split="train")
    ds = ClipDataset(table, train_sampler(table, cfg["batch_size"], cfg["seed"]), decoder,
                     cfg.get("torchcodec") or TORCHCODEC_DEFAULT)
    dl = DataLoader(ds, batch_size=cfg["batch_size"], num_workers=cfg["workers"],
                    persistent_workers=cfg["workers"] > 0, prefetch_factor=2 if cfg["workers"] else None,
                    pin_memory=cfg["device"] == "gpu")
    device = torch.device("cuda" if cfg["device"] == "gpu" else "cpu")
    for b in dl:
        yield b["clips"].to(device, non_blocking=True), keep(b["index"]), keep(b["start"])


def batches_spdl(cfg: dict, jpeg: bool = False):
    """Endless (clips, rows, starts) batches from an SPDL pipeline: `cfg['workers']` threads load
    clips concurrently (SPDL's decoder releases the GIL), then batches of `batch_size` are stacked.
    Clips come back in sample order, so the stream is the DataLoaders' one."""
    import torch
    from spdl.pipeline import PipelineBuilder

    from sharding.reader import SampleReader, load_shards

    table = load_shards(cfg["shards"], split="train")
    sampler = train_sampler(table, cfg["batch_size"], cfg["seed"])
    reader, num_frames = SampleReader(table), table.columns["num_frames"]
    workers = max(1, cfg["workers"])

    def load(n: int):
        d = sampler.draw(n)
        if jpeg:
            frames = decode_jpegs("spdl_jpeg", window_jpegs(table, reader, d.row, d.start, CLIP_LEN))
        else:
            frames = decode_window_spdl(reader.read(d.row), d.start, CLIP_LEN, int(num_frames[d.row]))
        return standardize_clip(frames, d.crop_x, d.crop_y, d.flip), d.row, d.start

    def collate(items):
        clips, rows, starts = zip(*items)
        return torch.stack(clips), np.array(rows, np.int64), np.array(starts, np.int64)  # (B, C, T, H, W)

    pipeline = (PipelineBuilder()
                .add_source(itertools.count())
                .pipe(load, concurrency=workers, output_order="input")
                .aggregate(cfg["batch_size"])
                .pipe(collate)
                .add_sink(2)  # batches prefetched, as the DataLoaders' prefetch_factor=2
                .build(num_threads=workers))
    device = torch.device("cuda" if cfg["device"] == "gpu" else "cpu")
    with pipeline.auto_stop():
        for clips, rows, starts in pipeline:
            yield clips.to(device, non_blocking=True), rows, starts


def batches_peer(cfg: dict):
    """The named peer's endless (clips, rows, starts) batches."""
    name = cfg["loader"]
    if name in ("spdl", "spdl_jpeg"):
        return batches_spdl(cfg, jpeg=name == "spdl_jpeg")
    return batches_dataloader(cfg, decoder_of(name))


def peer_unavailable(peer: str, shards: str, torchcodec: str = TORCHCODEC_DEFAULT) -> str | None:
    """None if the peer's decoder imports and decodes a sample of these shards, else why not (with
    what to install when it is missing)."""
    import importlib

    from sharding.reader import load_shards

    decoder = decoder_of(peer)
    try:  # torchcodec raises RuntimeError, not ImportError, when it finds no FFmpeg libraries
        importlib.import_module(DECODER_MODULES[decoder])
    except Exception as e:
        return (f"{decoder} is not installed or cannot load its libraries ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else ''}); {INSTALL_HINT[decoder]}")
    try:
        table = load_shards(shards, split="train")
        if decoder.endswith("_jpeg"):
            from sharding.reader import SampleReader

            frames = decode_jpegs(decoder, window_jpegs(table, SampleReader(table), 0, 0, 2))
        else:
            frames = decode_window(decoder, table.read(0), 0, 2, int(table.columns["num_frames"][0]),
                                   torchcodec)
        if frames.shape[0] != 2:
            return f"{decoder} returned {frames.shape[0]} frames for a 2-frame window"
        return None
    except Exception as e:
        return f"{decoder} cannot decode a sample of {shards}: {type(e).__name__}: {str(e)[:300]}"
