"""Shard sets given as URLs in a run config: copied to the node's disk before the loaders read them.

`data.train.shards` and `eval.sets[].shards` may be `s3://`, `gs://`, `http(s)://` URLs when
`data.stage_dir` is set. Every rank calls `local_config`; `sharding.stage.stage` serializes the calls
on one destination with a file lock, so the first rank of each node copies (local rank 0 shows the
progress), the node's other ranks wait for it, then find the copy complete after a stat of each file.
A re-run re-checks the copy the same way: nothing is fetched or hashed again. The run's stored config
keeps the URLs; only the loaders see the local folders.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from sharding.stage import is_url, stage


def local_dir(url: str, stage_dir: str | Path) -> Path:
    """The folder a URL's set is staged into: `STAGE_DIR/<last path part>-<hash of the URL>`, so two
    sets with the same folder name never share one."""
    tail = re.sub(r"[^\w.-]", "_", url.rstrip("/").rsplit("/", 1)[-1]) or "set"
    return Path(stage_dir) / f"{tail}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def local_shards(shards: str, stage_dir: str | Path | None, local_rank: int) -> str:
    """`shards` itself, or for a URL the local copy, staged first (every rank may call this)."""
    if not is_url(shards):
        return shards
    if stage_dir is None:  # TrainConfig refuses this; a guard for other callers
        raise ValueError(f"{shards} is a URL: set data.stage_dir")
    dest = local_dir(shards, stage_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return str(stage(shards, dest, progress=local_rank == 0))


def local_config(cfg, local_rank: int, train: bool = True):
    """A copy of the run config `cfg` whose URL shard sets point at their staged local copies
    (`train=False`: the training set is left as it is: an evaluation-only run reads only its
    classes, from the checkpoint when the set is not here)."""
    data = cfg.data
    if train:
        data = data.model_copy(update={"train": data.train.model_copy(
            update={"shards": local_shards(data.train.shards, data.stage_dir, local_rank)})})
    sets = [ts.model_copy(update={"shards": local_shards(ts.shards, data.stage_dir, local_rank)})
            for ts in cfg.eval.sets]
    return cfg.model_copy(update={"data": data, "eval": cfg.eval.model_copy(update={"sets": sets})})
