"""Jobs for the worker-pool fault tests (a module of its own: spawned workers import it by name)."""

from __future__ import annotations

import os
import signal
import time


def square(x: int) -> int:
    return x * x


def crash_on(x: int, bad: int, sig: int = signal.SIGKILL) -> int:
    """Die by `sig` on the bad input, as a segfaulting decoder or the OOM killer would."""
    if x == bad:
        os.kill(os.getpid(), sig)
        time.sleep(60)
    return x * x


def hang_on(x: int, bad: int) -> int:
    """Never return on the bad input, as a decoder stuck in a loop."""
    if x == bad:
        time.sleep(3600)
    return x * x


def worker_pid(x: int) -> int:
    return os.getpid()


def failure(job: tuple, reason: str) -> str:
    return f"failed {job[0]}: {reason}"


def started_at(x: int) -> float:
    """When the worker began this job (CLOCK_MONOTONIC is one clock for all processes)."""
    return time.monotonic()
