"""A pool of worker processes that outlives its workers: one input's crash, kill or hang costs that
input, never the build.

`concurrent.futures.ProcessPoolExecutor` cannot do this: one worker killed by a signal (a decoder
segfault, the OOM killer) breaks the whole pool (`BrokenProcessPool`) without saying which task
did it, and it has no per-task timeout. Here each worker runs one task at a time, so the pool knows
which input a dead or stuck worker held:

- a worker that dies mid-task (signal, exit) -> that task's result is `on_failure(job, "worker
  crashed: signal N (NAME)")`, and a new worker takes its place;
- a task running longer than `timeout` seconds (from the moment the worker starts it: a worker's
  own start-up, slow on a loaded machine, does not count, up to `_START_GRACE_S`) -> its worker is
  killed, the result is `on_failure(job, "exceeded --video-timeout (T s)")`, and a new worker takes
  its place;
- every worker exits after `recycle_every` tasks and is replaced, so memory a decoder leaks or
  fragments cannot creep over a long build;
- workers die with the pool's process: `PR_SET_PDEATHSIG` (Linux) plus a watchdog thread that
  polls the parent's pid, so a builder killed with SIGKILL leaves no worker behind.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait

_PR_SET_PDEATHSIG = 1
_WATCHDOG_PERIOD_S = 1.0
_START_GRACE_S = 60.0  # a worker may take this long to start its first task before the timeout runs


def _die_with_parent(parent_pid: int) -> None:
    """Make this process exit when `parent_pid` does (SIGKILL from the kernel on Linux; a polling
    thread everywhere, which also covers the window before prctl took effect)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still applies

    def watchdog():
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(_WATCHDOG_PERIOD_S)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watchdog, name="parent-watchdog", daemon=True).start()


def _worker_main(conn, fn: Callable, recycle_every: int | None, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    done = 0
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        tid, args = msg
        conn.send(("started", tid))  # the task's time limit counts from here, not from our start-up
        conn.send(("done", tid, fn(*args)))
        done += 1
        if recycle_every and done >= recycle_every:
            return  # the pool starts a fresh worker in our place


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown"
        return f"worker crashed: signal {-exitcode} ({name})"
    return f"worker crashed: exited with code {exitcode} mid-task"


class _Worker:
    def __init__(self, ctx, fn, recycle_every):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, fn, recycle_every, os.getpid()),
                                daemon=True, name="sharding-worker")
        self.proc.start()
        child.close()
        self.task: tuple[int, tuple] | None = None  # (task id, job) while busy
        self.started = 0.0  # when the task was sent; then when the worker said it started it
        self.running = False  # the worker said it started the task
        self.done, self.recycle_every = 0, recycle_every

    def deadline(self, timeout: float) -> float:
        """When the task in hand exceeds `timeout` (CLOCK_MONOTONIC)."""
        return self.started + timeout + (0.0 if self.running else _START_GRACE_S)

    @property
    def retiring(self) -> bool:
        """Done its share: it exits by itself now, so it gets no new task."""
        return bool(self.recycle_every) and self.done >= self.recycle_every

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.conn.close()


class WorkerPool:
    """`imap(jobs)` over worker processes, results in input order, surviving worker failures.

    Args:
        fn: a picklable module-level function; a job is its argument tuple.
        workers: number of processes (>= 1).
        on_failure: `(job, reason) -> result` for a task whose worker crashed or timed out.
        timeout: seconds one task may run (None: no limit).
        recycle_every: tasks after which a worker is replaced (None: never).
        context: the multiprocessing start method ('spawn': no inherited FFmpeg state).
    """

    def __init__(self, fn: Callable, workers: int, on_failure: Callable[[tuple, str], object],
                 timeout: float | None = None, recycle_every: int | None = None, context: str = "spawn"):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.fn, self.on_failure, self.timeout = fn, on_failure, timeout
        self.recycle_every = recycle_every
        self._ctx = multiprocessing.get_context(context)
        self._workers = [self._spawn() for _ in range(workers)]
        self.restarts = 0  # workers replaced after a crash or a timeout (recycling not counted)

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self.fn, self.recycle_every)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker (idle ones are told to exit, busy ones are killed)."""
        for w in self._workers:
            if w.task is None and w.proc.is_alive():
                try:
                    w.conn.send(None)
                except OSError:
                    pass
                w.proc.join(timeout=5)
            w.kill()
        self._workers = []

    def imap(self, jobs: Iterable[tuple], window: int | None = None,
             cost: Callable[[tuple], float] | None = None) -> Iterator:
        """Yield `fn(*job)` (or `on_failure(job, reason)`) for each job, in order, with at most
        `window` jobs (default 4 per worker) submitted and not yet yielded.

        With `cost`, an idle worker takes the costliest job queued in the window rather than the
        oldest, so one long input near the end does not leave the other workers idle while it runs.
        Example: 2 workers, jobs costing [1, 1, 1, 9] all in the window: FIFO finishes at 1+9 = 10
        on one worker, costliest-first runs 9 on one worker and 1+1+1 on the other: 9.
        """
        window = window or 4 * len(self._workers)
        it = iter(jobs)
        queue: deque = deque()
        results: dict[int, object] = {}
        submitted = yielded = 0
        exhausted = False
        while True:
            while not exhausted and submitted - yielded < window:
                job = next(it, None)
                if job is None:
                    exhausted = True
                    break
                queue.append((submitted, job, cost(job) if cost else 0.0))
                submitted += 1
            for i, w in enumerate(self._workers):
                if w.task is None and queue and not w.retiring:
                    pick = max(range(len(queue)), key=lambda k: queue[k][2]) if cost else 0
                    task = queue[pick][:2]
                    try:
                        w.conn.send(task)
                    except OSError:  # it died while idle: the task never reached it
                        w.kill()
                        self._workers[i] = self._spawn()
                        continue
                    del queue[pick]
                    w.task, w.started, w.running = task, time.monotonic(), False
            while yielded in results:
                yield results.pop(yielded)
                yielded += 1
                if not exhausted and submitted - yielded < window:
                    break  # refill before yielding more
            if exhausted and yielded == submitted:
                return
            if yielded in results or (not exhausted and submitted - yielded < window):
                continue
            self._wait(results)

    def _wait(self, results: dict) -> None:
        """Block until some worker answers, dies or runs out of time; record what happened."""
        now = time.monotonic()
        busy = [w for w in self._workers if w.task is not None]
        left = [w.deadline(self.timeout) - now for w in busy] if self.timeout else []
        ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in self._workers],
                         timeout=max(0.0, min(left)) if left else None))
        for i, w in enumerate(self._workers):
            if w.task is not None and w.conn in ready:
                try:
                    while w.task is not None and w.conn.poll():
                        kind, tid, *result = w.conn.recv()
                        if tid != w.task[0]:
                            continue
                        if kind == "started":
                            w.started, w.running = time.monotonic(), True
                        else:
                            results[tid] = result[0]
                            w.task = None
                            w.done += 1
                except (EOFError, OSError):
                    pass  # died while answering: handled as a crash below
            dead = w.proc.sentinel in ready or not w.proc.is_alive()
            late = (w.task is not None and self.timeout is not None
                    and time.monotonic() >= w.deadline(self.timeout))
            if dead or late:
                if w.task is not None:
                    w.proc.join(timeout=0.5) if dead else None
                    reason = (_death_reason(w.proc.exitcode) if dead and not late
                              else f"exceeded --video-timeout ({self.timeout:g} s)")
                    tid, job = w.task
                    results[tid] = self.on_failure(job, reason)
                    self.restarts += 1
                w.kill()
                self._workers[i] = self._spawn()
