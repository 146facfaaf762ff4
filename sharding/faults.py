"""The builder's fault-injection hook, for the fault tests (tests/test_faults_build.py).

The tests plan faults through the environment variable `ZSVIDEO_FAULTS` (the trainer reads the
same variable: trainer/faults.py), a comma-separated list of KIND:POINT:WHICH, so a fault lands at
an exact point of the build's progress whatever the machine's speed:

    pause:video:v3      a worker stops before decoding input `v3` (its video id) until it is killed
    kill:video:v3       a worker SIGKILLs itself there (a decoder that segfaults, the OOM killer)
    pause:tar_member:2  the builder stops with shard 2's first sample in its temp tar
    pause:tar:2         ... after shard 2's tar is renamed into place, before its index and table
    pause:table:2       ... after its index and table, before its state file (_parts/NAME.json)
    pause:state:2       ... after its state file
    pause:manifest:0    ... after every shard, before _info.json
    pause:table_cache:write   a reader building a set's table cache stops with its arrays written,
                        before the cache is complete (sharding/nodecache.py)
    pause:sha256:PATH   a reader verifying sha256 stops before hashing the tar PATH (as the manifest
                        names it), holding the set's lock

A paused process prints `fault: paused at POINT WHICH (pid PID)` on stderr and sleeps until it
is killed: the test waits for that line, then kills whom it chooses. Unset (always, outside the
tests), a hook costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import sys
import time

FAULTS_ENV = "ZSVIDEO_FAULTS"


def fault_point(point: str, which) -> None:
    """Carry out what ZSVIDEO_FAULTS plans at `point` for `which` (a shard index or a video id)."""
    plan = os.environ.get(FAULTS_ENV)
    if not plan:
        return
    for item in plan.split(","):
        kind, at, at_which = (item.strip().split(":") + ["", "", ""])[:3]
        if at != point or at_which != str(which):
            continue
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "pause":
            print(f"fault: paused at {point} {which} (pid {os.getpid()})", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)
