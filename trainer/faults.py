"""How a run stops: faults with a message that says what to do, signals, the entry points' exit
codes, and the fault-injection hook of the fault tests.

Both command lines (`trainer/main.py` and `python -m trainer.evaluate`) run through `run_cli`, so a
known fault ends every rank with one line on stderr and exit code 3, never a traceback; a signal
outside the step loop ends it with 128 + the signal's number.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

from sharding.reader import ShardError
from trainer.embeddings import MissingWordsError, StaleCacheError


class TrainingError(RuntimeError):
    """A fault that stops the run with what to do next (NaN loss, bad data, overlapping classes)."""


class Interrupted(BaseException):
    """SIGTERM/SIGINT outside the step loop. A BaseException, like KeyboardInterrupt: no
    `except Exception` on the way may swallow it."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


# faults whose message names the file or setting and the way out: printed without a traceback
USER_FAULTS = (TrainingError, ShardError, StaleCacheError, MissingWordsError, FileNotFoundError, ValueError)


SIGNALLED = threading.Event()  # set by the first SIGTERM/SIGINT (what a planned `pause` waits for)


class Signals:
    """SIGTERM/SIGINT for one run. Inside `deferred()` (the step loop) a signal only sets `signum`:
    the loop checkpoints at the end of the step, where the state is consistent, and exits. Anywhere
    else (vector loading, loader setup, every evaluation, eval-only) it raises `Interrupted` at
    once; there the newest checkpoint is already the consistent state. A second signal exits the
    process immediately (os._exit), whatever it is doing.

    Installed before the loaders fork their reader processes (py_workers > 0), which inherit it: in
    those the handler does nothing, so a signal to the whole process group does not kill a reader
    mid-batch (the parent decides). Such a forked process exits by itself within a second of the
    trainer's death (a kill -9 included): orphaned readers would otherwise live on, holding the
    job's output pipes open, so the launcher waits forever.
    """

    def __init__(self):
        self.signum: int | None = None
        self._deferred = False
        self._pid = os.getpid()

    def install(self) -> "Signals":
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        os.register_at_fork(after_in_child=_exit_with_parent)
        return self

    def _on_signal(self, signum, frame):
        if os.getpid() != self._pid:
            return
        if self.signum is not None:
            print(f"second signal ({signal.Signals(signum).name}): exiting now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        SIGNALLED.set()
        if not self._deferred:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self):
        """Signals only set `signum` inside this block."""
        self._deferred = True
        try:
            yield self
        finally:
            self._deferred = False

    @contextlib.contextmanager
    def immediate(self):
        """Signals raise again inside this block (an evaluation within the step loop); one that came
        while deferred raises on entry."""
        was, self._deferred = self._deferred, False
        try:
            if self.signum is not None:
                raise Interrupted(self.signum)
            yield self
        finally:
            self._deferred = was


def _exit_with_parent() -> None:
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_cli(fn, *args, **kwargs) -> int:
    """`fn(*args, **kwargs)` as a command's body: its return code, 3 after a known fault (the message
    on stderr, prefixed with this rank), 128 + signal after `Interrupted`, and the process group
    torn down either way."""
    rank = os.environ.get("RANK", 0)
    try:
        return fn(*args, **kwargs)
    except USER_FAULTS as e:
        print(f"error (rank {rank}): {e}", file=sys.stderr, flush=True)
        return 3
    except Interrupted as e:
        print(f"rank {rank}: {e}; stopped (re-run the same command to resume from the newest checkpoint)",
              file=sys.stderr, flush=True)
        return 128 + e.signum
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------- fault injection
# The fault tests (tests/test_faults_train.py) plan faults through this environment variable, a
# comma-separated list of KIND:POINT:STEP[:RANK] (every rank when RANK is left out):
#   kill:after_step:5   SIGKILL once step 5 is done and logged
#   kill:saved:4        SIGKILL right after the checkpoint of step 4 is written
#   kill:eval:2         SIGKILL during the evaluation at step 2, after its first test set is written
#   raise:after_step:3:1  rank 1 raises RuntimeError after step 3 while the others wait in a collective
#   inf_grad:step:4     step 4's gradients are inf (a finite loss: what bf16 overflow gives)
#   nan_weights:after_step:2  the weights are NaN after step 2 (before that step's checkpoint)
#   pause:after_step:3  print "fault: paused at after_step 3 (rank R)" and wait there for a signal (the
#                       test's SIGTERM then lands at that exact step, on a fast machine or a slow one)
# Unset (always, outside the tests) it costs one dict lookup per call.
FAULTS_ENV = "ZSVIDEO_FAULTS"


def planned_fault(point: str, step: int) -> str | None:
    """The kind of fault ZSVIDEO_FAULTS plans for this rank at `point` of `step`, else None."""
    plan = os.environ.get(FAULTS_ENV)
    if not plan:
        return None
    rank = os.environ.get("RANK", "0")
    for item in plan.split(","):
        kind, at, at_step, *on = item.strip().split(":")
        if at == point and at_step == str(step) and (not on or on[0] == rank):
            return kind
    return None


def inject(point: str, step: int, model: torch.nn.Module | None = None):
    """Carry out the fault planned at `point` of `step` (see FAULTS_ENV): kill, raise, or poison the
    model (NaN weights; inf gradients through a one-shot hook, whose handle is returned to be removed
    after the step)."""
    kind = planned_fault(point, step)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "raise":
        raise RuntimeError(f"injected fault on rank {os.environ.get('RANK', 0)} at {point} of step {step}")
    elif kind == "nan_weights":
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
    elif kind == "pause":
        print(f"fault: paused at {point} {step} (rank {os.environ.get('RANK', 0)})", flush=True)
        while not SIGNALLED.wait(0.05):
            pass
    elif kind == "inf_grad":
        return next(model.parameters()).register_hook(lambda g: torch.full_like(g, float("inf")))
    return None
