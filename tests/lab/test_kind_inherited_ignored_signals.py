"""Kind: a process test that waits forever when the suite inherits ignored signals. Started as `nohup make test &`,
the test run inherits SIGHUP ignored (nohup) and SIGINT ignored (a background job of a non-interactive shell); exec
keeps an ignored disposition, so a stand-in driver the test signals did not die and the test waited on it without a
bound (the driver-group test hung for SIGHUP). Every process a test signals now starts with the default dispositions
(`_procs.default_signals`), and the wait after the signal has a timeout. Here the signalled-driver tests run in a
pytest started with SIGINT and SIGHUP ignored, as `nohup ... &` starts it, and SIGTERM ignored too so that the TERM
case is covered by the same run."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the stand-ins' reaper reads /proc")


def _ignored() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def _ignored_in(pid: int) -> set[int]:
    with open(f"/proc/{pid}/status") as f:
        mask = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
    return {s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if mask >> (s - 1) & 1}


def test_kind_inherited_ignored_signals_default_signals_restores_them():
    sys.path.insert(0, str(Path(__file__).parent))
    from _procs import default_signals

    code = "import sys; sys.stdin.read()"
    plain = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, preexec_fn=_ignored)
    restored = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                preexec_fn=lambda: (_ignored(), default_signals()))
    try:
        assert _ignored_in(plain.pid) == {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}  # what nohup ... & gives
        assert _ignored_in(restored.pid) == set()
    finally:
        for p in (plain, restored):
            p.kill()
            p.wait()


def test_kind_inherited_ignored_signals_group_signal_test_under_nohup():
    test = "tests/lab/test_kind_ray_orphans.py::test_kind_ray_orphans_end_when_the_driver_group_is_signalled"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, preexec_fn=_ignored)
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
