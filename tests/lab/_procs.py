"""Process helpers for the tests of drivers and workers, read from /proc (no psutil)."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    state, ppid = text[text.rindex(")") + 2 :].split()[:2]
    return comm, state, int(ppid)


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(st[2], []).append(int(entry))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def alive(pids) -> set[int]:
    """The ``pids`` still running (a zombie has stopped: it only waits to be reaped)."""
    out = set()
    for p in pids:
        st = _stat(p)
        if st is not None and st[1] not in ("Z", "X"):
            out.add(p)
    return out


def workers_of(pid: int) -> set[int]:
    """Descendants of ``pid`` named ``normlab-worker`` (the name a local worker gives itself on Linux)."""
    return {p for p in descendants(pid) if (_stat(p) or ("",))[0] == "normlab-worker"}


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def count_runs(db: Path) -> int:
    if not Path(db).exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def default_signals() -> None:
    """``preexec_fn`` of a process a test will signal: SIGINT, SIGTERM and SIGHUP back to their default
    dispositions. A test run started in the background inherits some of them *ignored* (``make test &`` and some CI
    runners: SIGINT; ``nohup``: SIGHUP), exec keeps an ignored disposition, and a Python child that starts with
    SIGINT ignored never raises KeyboardInterrupt -- so the Ctrl-C, hangup or SIGTERM under test would be lost and
    the test would wait for a process that never ends."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
