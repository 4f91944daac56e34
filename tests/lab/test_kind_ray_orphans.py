"""Kind: processes that outlive the driver of a local Ray instance. Ray's GCS and raylet die with a SIGKILLed
driver, but the raylet's children (dashboard and runtime-env agents, workers) stayed as orphans for minutes.
normlab's reaper (normlab.lab._ray_reaper) ends them. The reaper is tested on a stand-in process tree first
(no Ray: an orphan that ignores SIGTERM), then once on a real local Ray instance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _procs import _stat, alive, default_signals, descendants, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reaper reads /proc (Linux)")

SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))

# A stand-in driver: starts the reaper as RayExecutor does, then a child and an orphan that ignore SIGTERM (the
# orphan's parent exits at once, like the raylet's agents once the raylet is gone), prints the pids, and either
# sleeps (to be killed) or closes the reaper on purpose ("bye") and keeps its own child. Both are started with the
# session's --session-name argument (as Ray starts its processes): the reaper finds them whatever its looks saw,
# so the test does not depend on timing; the looks themselves are tested on real Ray below (a Ray worker's
# command line is its process title, "ray::...", once it runs).
STANDIN = r"""
import os, subprocess, sys, time
from normlab.lab.executors import _start_reaper
reaper = _start_reaper()
session = "session_standin_%d" % os.getpid()
reaper.stdin.write(session.encode() + b"\n"); reaper.stdin.flush()
stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(600)", "--session-name=" + session]
child = subprocess.Popen(stubborn, stdout=subprocess.PIPE)
child.stdout.readline()
mid = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE); p.stdout.readline(); print(p.pid, flush=True)", *stubborn], stdout=subprocess.PIPE)
orphan = int(mid.stdout.readline()); mid.wait()
print(reaper.pid, child.pid, orphan, flush=True)
if sys.argv[1] == "close":
    reaper.stdin.write(b"bye\n"); reaper.stdin.close(); reaper.wait(timeout=60)
    print("closed", flush=True)
time.sleep(600)
"""


def _start_standin(mode: str):
    proc = subprocess.Popen([sys.executable, "-c", STANDIN, mode], stdout=subprocess.PIPE, text=True, env=ENV)
    reaper, child, orphan = (int(x) for x in proc.stdout.readline().split())
    return proc, reaper, child, orphan


def _cleanup(proc, pids) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for pid in alive(pids):
        os.kill(pid, signal.SIGKILL)


def test_kind_ray_orphans_end_when_the_driver_is_killed():
    proc, reaper, child, orphan = _start_standin("sleep")
    family = {reaper, child, orphan} | descendants(proc.pid)
    try:
        assert _stat(orphan)[2] != proc.pid and orphan not in descendants(proc.pid)  # a real orphan already
        proc.kill()  # SIGKILL: no Python cleanup runs in the driver
        proc.wait()
        assert wait_for(lambda: not alive(family), 30.0), alive(family)  # SIGTERM ignored: SIGKILL after GRACE
    finally:
        _cleanup(proc, family)


def test_kind_ray_orphans_deliberate_close_leaves_the_driver_tree_alone():
    proc, reaper, child, orphan = _start_standin("close")
    try:
        assert proc.stdout.readline().strip() == "closed"
        # the orphan (outside the driver's tree) was SIGKILLed before the reaper exited; under load it may take a
        # moment to stop running
        assert wait_for(lambda: not alive({reaper, orphan}), 30.0), alive({reaper, orphan})
        assert alive({child}) == {child} and child in descendants(proc.pid)  # the driver's own child: untouched
    finally:
        _cleanup(proc, {reaper, child, orphan})


RAY_DRIVER = r"""
import time
import ray
from normlab.lab.executors import RayExecutor
ex = RayExecutor(jobs=1)
ex._start()
@ray.remote(num_cpus=1)
def busy():
    time.sleep(600)
ref = busy.remote()
print("started", flush=True)
time.sleep(600)
"""


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_kind_ray_orphans_of_a_killed_local_ray_driver():
    pytest.importorskip("ray", reason="Ray is the optional extra normlab[cluster]")
    proc = subprocess.Popen([sys.executable, "-c", RAY_DRIVER], stdout=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)
    family: set[int] = set()
    try:
        assert proc.stdout.readline().strip() == "started"
        assert wait_for(lambda: any(_cmdline(p).startswith(b"ray::busy") for p in descendants(proc.pid)), 120.0)
        family = descendants(proc.pid)
        names = {(_stat(p) or ("",))[0] for p in family}
        assert "raylet" in names and any(n.startswith("ray::") for n in names), names  # agents and the task
        proc.kill()
        proc.wait()
        assert wait_for(lambda: not alive(family), 60.0), [(p, _stat(p)) for p in alive(family)]
    finally:
        _cleanup(proc, family)


# A stand-in driver killed with its whole process group: a terminal hangup (SIGHUP), `timeout` or `kill -- -PGID`
# (SIGTERM) reach every process of the group, the reaper too unless it left the group. The stubborn process runs
# in a session of its own (a process that left the group, as a daemonized agent), ignores SIGTERM and SIGHUP and
# is started with the session's --session-name, so the reaper finds it whatever its looks saw.
GROUP_STANDIN = r"""
import os, subprocess, sys, time
from normlab.lab.executors import _start_reaper
reaper = _start_reaper()
session = "session_group_%d" % os.getpid()
reaper.stdin.write(session.encode() + b"\n"); reaper.stdin.flush()
code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.signal(signal.SIGHUP, "
        "signal.SIG_IGN); print(1, flush=True); time.sleep(600)")
stubborn = subprocess.Popen([sys.executable, "-c", code, "--session-name=" + session], stdout=subprocess.PIPE,
                            start_new_session=True)
stubborn.stdout.readline()
print(reaper.pid, stubborn.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_kind_ray_orphans_end_when_the_driver_group_is_signalled(sig):
    proc = subprocess.Popen([sys.executable, "-c", GROUP_STANDIN], stdout=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True,  # its own group: the signal below reaches nothing of pytest's
                            preexec_fn=default_signals)  # a driver that dies of the signal, even under nohup
    reaper, stubborn = (int(x) for x in proc.stdout.readline().split())
    try:
        os.killpg(proc.pid, sig)  # the driver's whole process group, as a hangup or `timeout` sends it
        proc.wait(timeout=30)  # a failure, not a hang, if the stand-in outlives the signal
        assert wait_for(lambda: not alive({stubborn}), 30.0), "the reaper died with the driver's group"
        assert wait_for(lambda: not alive({reaper}), 30.0)
    finally:
        _cleanup(proc, {reaper, stubborn})


# A stand-in driver that forked a child (a DataLoader worker, a multiprocessing "fork" pool) before closing: the
# child holds a copy of the pipe to the reaper, so the pipe does not end with the driver's "bye". The reaper must
# act on "bye" itself, not wait for the end of a pipe that another process keeps open.
FORKED_STANDIN = r"""
import os, subprocess, sys, time
from normlab.lab.executors import _start_reaper
reaper = _start_reaper()
session = "session_forked_%d" % os.getpid()
reaper.stdin.write(session.encode() + b"\n"); reaper.stdin.flush()
forked = os.fork()
if forked == 0:  # holds the reaper's pipe (inherited), does nothing else
    time.sleep(600)
    os._exit(0)
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(600)"
mid = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; p = subprocess.Popen(sys.argv[1:], "
                        "stdout=subprocess.PIPE); p.stdout.readline(); print(p.pid, flush=True)", sys.executable,
                        "-c", code, "--session-name=" + session], stdout=subprocess.PIPE)
orphan = int(mid.stdout.readline()); mid.wait()
print(reaper.pid, forked, orphan, flush=True)
reaper.stdin.write(b"bye\n"); reaper.stdin.close()
try:
    reaper.wait(timeout=60)
    print("closed", flush=True)
except subprocess.TimeoutExpired:
    print("reaper still waiting", flush=True)
time.sleep(600)
"""


def test_kind_ray_orphans_deliberate_close_while_a_forked_child_holds_the_pipe():
    proc = subprocess.Popen([sys.executable, "-c", FORKED_STANDIN], stdout=subprocess.PIPE, text=True, env=ENV)
    reaper, forked, orphan = (int(x) for x in proc.stdout.readline().split())
    try:
        # The bound of this test: a reaper waiting for the end of the pipe waits as long as the forked child lives
        # (here 600 s) and the stand-in reports it after 60 s; one acting on "bye" ends after GRACE.
        assert proc.stdout.readline().strip() == "closed"
        assert wait_for(lambda: not alive({orphan}), 30.0), "the orphan outlived the deliberate close"
        assert alive({forked}) == {forked}  # the driver's own (forked) child: untouched
    finally:
        _cleanup(proc, {reaper, forked, orphan})


# A bystander: a process of the same user, outside the driver's tree, whose command line merely mentions the
# session (``tail -f /tmp/ray/<session>/logs/raylet.out`` in another terminal). It is not of the session: the
# reaper must leave it alone whether the driver closes on purpose or is killed. The stand-in waits for the test's
# go (a line on stdin) so that the bystander runs before the reaper acts.
BYSTANDER_STANDIN = r"""
import os, sys, time
from normlab.lab.executors import _start_reaper
reaper = _start_reaper()
session = "session_bystander_%d" % os.getpid()
reaper.stdin.write(session.encode() + b"\n"); reaper.stdin.flush()
print(reaper.pid, session, flush=True)
sys.stdin.readline()
if sys.argv[1] == "close":
    reaper.stdin.write(b"bye\n"); reaper.stdin.close(); reaper.wait(timeout=60)
    print("closed", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("mode", ["close", "kill"])
def test_kind_ray_orphans_a_process_merely_naming_the_session_is_left_alone(mode):
    proc = subprocess.Popen([sys.executable, "-c", BYSTANDER_STANDIN, mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=ENV)
    reaper_pid, session = proc.stdout.readline().split()
    reaper = int(reaper_pid)
    bystander = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()",
                                  f"/tmp/ray/{session}/logs/raylet.out"], stdin=subprocess.PIPE)
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        if mode == "close":
            assert proc.stdout.readline().strip() == "closed"  # the reaper has acted and exited
        else:
            proc.kill()
            proc.wait()
            assert wait_for(lambda: not alive({reaper}), 30.0)  # the reaper has acted and exited
        assert bystander.poll() is None, "the reaper ended a process that only named the session"
    finally:
        bystander.kill()
        bystander.wait()
        _cleanup(proc, {reaper})
