"""How a run stops: faults with a message that says what to do, and the entry points' exit codes.

Both command lines (`trainer/main.py` and `python -m trainer.evaluate`) run through `run_cli`, so a
known fault ends every rank with one line on stderr and exit code 3, never a traceback.
"""

from __future__ import annotations

import os
import sys

import torch.distributed as dist

from sharding.reader import ShardError
from trainer.embeddings import MissingWordsError, StaleCacheError


class TrainingError(RuntimeError):
    """A fault that stops the run with what to do next (NaN loss, bad data, overlapping classes)."""


# faults whose message names the file or setting and the way out: printed without a traceback
USER_FAULTS = (TrainingError, ShardError, StaleCacheError, MissingWordsError, FileNotFoundError, ValueError)


def run_cli(fn, *args, **kwargs) -> int:
    """`fn(*args, **kwargs)` as a command's body: its return code, 3 after a known fault (the message
    on stderr, prefixed with this rank), and the process group torn down either way."""
    try:
        return fn(*args, **kwargs)
    except USER_FAULTS as e:
        print(f"error (rank {os.environ.get('RANK', 0)}): {e}", file=sys.stderr, flush=True)
        return 3
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
