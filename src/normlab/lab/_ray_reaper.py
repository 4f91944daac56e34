"""Ends a local Ray instance's processes once the normlab driver that started them is gone (Linux, /proc).

Run by :class:`~normlab.lab.executors.RayExecutor` as ``python -I _ray_reaper.py DRIVER_PID`` (stdlib only, so
it starts in milliseconds and imports neither normlab nor torch), its stdin a pipe from the driver: line 1 is the
Ray session name (sent once ``ray.init`` returned), a later line ``bye`` means the driver closes on purpose.

Why: Ray's GCS and raylet die with the driver (PR_SET_PDEATHSIG), but the raylet's own children (dashboard agent,
runtime-env agent, workers) are then orphans that stay for minutes -- the agents block on the dead GCS and
ignore SIGTERM. So while the driver lives, this process records every descendant of the driver (pid and start
time, every ``POLL`` seconds). When its stdin says ``bye`` (``ray.shutdown()`` done; the line itself counts, as
a child the driver forked may still hold the pipe), or ends without it because the driver died, even by SIGKILL
(then it first waits for the driver to stop running) -- it ends each recorded process, and each process of this
user started with this Ray session's ``--session-name`` (a worker started after the last look), that is not
below a living driver: SIGTERM, then SIGKILL after ``GRACE`` seconds. A pid is signalled only while its start time
matches the recorded one (a reused pid is never hit), and only this driver's tree or this session qualify, so no
other Ray instance (another user's or another command's) is touched. It runs in a session of its own (a signal to
the driver's process group -- terminal hangup, ``timeout`` -- must not end it with the driver) and ignores SIGINT:
Ctrl-C belongs to the driver, which shuts its instance down itself. This process outlives the driver by at most
~``GRACE`` seconds plus one ``POLL``.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

POLL = 0.2  # seconds between looks at the driver's tree
GRACE = 3.0  # seconds between SIGTERM and SIGKILL


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, start time in clock ticks, state) of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()  # after "pid (comm) ": state ppid ... starttime is the 20th
    return int(fields[1]), int(fields[19]), fields[0].decode()


def _table() -> dict[int, tuple[int, int, str]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                out[int(name)] = st
    return out


def _below(root: int, table: dict[int, tuple[int, int, str]]) -> dict[int, int]:
    """pid -> start time of every process below ``root`` in ``table``."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, int] = {}
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in out:
                out[c] = table[c][1]
                todo.append(c)
    return out


def _names_session(pid: int, session: bytes) -> bool:
    """Whether ``pid`` was started as a process of this Ray session: Ray gives each of its processes the argument
    ``--session-name=<name>`` (or ``--session-name <name>``). Merely mentioning the name (``tail -f
    /tmp/ray/<session>/logs/raylet.out``) does not count."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return b"--session-name=" + session in args or any(
        a == b"--session-name" and b == session for a, b in zip(args, args[1:]))


def _living(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] == start and st[2] not in ("Z", "X")


def _targets(driver: int, driver_start: int, known: dict[int, int], session: bytes, me: int) -> dict[int, int]:
    table = _table()
    d = table.get(driver)
    living = d is not None and d[1] == driver_start and d[2] not in ("Z", "X")
    protected = set(_below(driver, table)) if living else set()  # a living driver's tree is its own business
    protected.add(me)
    out = {p: t for p, t in known.items() if p in table and table[p][1] == t}
    if session:
        mine = os.getuid()
        for pid in table:
            if pid not in out and _owned_by(pid, mine) and _names_session(pid, session):
                out[pid] = table[pid][1]
    for pid in list(out):  # and everything below them (a worker's own children)
        out.update(_below(pid, table))
    return {p: t for p, t in out.items() if p not in protected and table[p][2] not in ("Z", "X")}


def _owned_by(pid: int, uid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == uid
    except OSError:
        return False


def _signal(targets: dict[int, int], sig: int) -> None:
    for pid, start in targets.items():
        st = _stat(pid)
        if st is not None and st[1] == start and st[2] not in ("Z", "X"):
            try:
                os.kill(pid, sig)
            except OSError:  # gone meanwhile, or not ours
                pass


def reap(driver: int, driver_start: int, known: dict[int, int], session: bytes) -> None:
    me = os.getpid()
    targets = _targets(driver, driver_start, known, session, me)
    if not targets:
        return
    _signal(targets, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline:
        targets = {p: t for p, t in targets.items() if (st := _stat(p)) is not None and st[1] == t
                   and st[2] not in ("Z", "X")}
        if not targets:
            return
        time.sleep(0.05)
    _signal(targets, signal.SIGKILL)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    driver = int(argv[1])
    me = os.getpid()
    st = _stat(driver)
    if st is None:  # the driver is already gone: nothing of it to record
        return 0
    driver_start = st[1]
    fd = sys.stdin.fileno()
    known: dict[int, int] = {}
    buf = b""
    first = True
    while True:
        ready, _, _ = select.select([fd], [], [], POLL)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            if b"bye" in buf.split(b"\n")[:-1]:  # a complete "bye" line: the driver closes on purpose; a process
                break  # it forked may keep the pipe open, so do not wait for the pipe's end
        table = _table()
        d = table.get(driver)
        if d is None or d[1] != driver_start:
            break  # the driver died with the pipe still open somewhere: act now
        below = _below(driver, table)
        below.pop(me, None)
        known.update(below)
        if first:  # the driver waits for this before starting Ray: nothing it starts escapes the first look
            first = False
            try:
                os.write(sys.stdout.fileno(), b"r")
                sys.stdout.close()
            except OSError:
                pass
    lines = [line.strip() for line in buf.split(b"\n")]
    session = lines[0] if len(lines) > 1 and lines[0] != b"bye" else b""
    if b"bye" not in lines:  # the driver did not close the pipe itself: it is dying; let it finish (its fds
        deadline = time.monotonic() + 10.0  # close before it stops running), so its tree is no longer its own
        while time.monotonic() < deadline and _living(driver, driver_start):
            time.sleep(0.02)
    reap(driver, driver_start, known, session)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
