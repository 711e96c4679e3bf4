"""A trial's run-dir lock: who is training it, and whether anyone still is.

`trial_lock` holds `run_dir/.lock` with an OS file lock (flock) while a trial trains, so it is released when
its process dies, even by SIGKILL. `lock_is_free` is what the store's stale-run sweep asks
(`Tracker.fail_stale`): a RUNNING run whose lock is free has no process behind it.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".lock"


def _try_exclusive(handle) -> bool:
    """Take an exclusive flock on an open file without waiting; False if another open file holds it."""
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class TrialBusy(Exception):
    """Another process is training this trial (it holds the run dir's lock)."""


@contextmanager
def trial_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir/.lock` exclusively while training; raise TrialBusy if another process holds it.
    Where flock does not exist (Windows), no lock is taken."""
    try:
        import fcntl
    except ImportError:      # pragma: no cover - not POSIX
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_NAME, "a+") as handle:
        if not _try_exclusive(handle):
            handle.seek(0)
            raise TrialBusy(f"being trained by another process ({handle.read().strip() or 'unknown'}); "
                            f"its results will appear when it finishes")
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_is_free(run_dir: Path) -> bool:
    """True when `run_dir/.lock` exists and no process holds it (tested by taking and dropping it at once).
    False when it is held, when there is no lock file here (a run dir on another machine's disk: nothing can
    be told) and where flock does not exist. The test holds the lock for an instant: a `bench run` starting this
    very trial at that instant skips it as busy (run it again)."""
    try:
        import fcntl
    except ImportError:      # pragma: no cover - not POSIX
        return False
    path = Path(run_dir) / LOCK_NAME
    if not path.is_file():
        return False
    with open(path, "a+") as handle:
        if not _try_exclusive(handle):
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
    return True


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
