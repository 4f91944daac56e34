"""Kind: a Ray --address where no cluster answers. ``ray.init`` retries such an address for many minutes (a
hang to the user); normlab must fail at once with one line naming --address, what it expected and what happened
(CLI: exit 2, no traceback). The address is a port bound here but not listening: nothing can accept there, and
no other process can take the port while the test holds it. No Ray instance is started by these tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("CI"):
    import ray
else:
    ray = pytest.importorskip("ray", reason="Ray is the optional extra normlab[cluster]; `make test` installs it")

from normlab.lab.executors import ExecutorUnavailable, RayExecutor, execute, make_executor
from normlab.lab.store import Store
from normlab.lab.train import TrainConfig

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def dead_address():
    """host:port where a connection is refused (bound, never listening) for as long as the test runs."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{s.getsockname()[1]}"
    s.close()


def test_kind_ray_unreachable_address_raises_naming_the_option(dead_address, tmp_path):
    for address in (dead_address, f"ray://{dead_address}"):
        with pytest.raises(ExecutorUnavailable) as info:
            RayExecutor(jobs=1, address=address)
        msg = str(info.value)
        assert msg.startswith(f"--address {address}: expected a running Ray cluster there"), msg
        assert f"connecting to {dead_address} failed: Connection refused" in msg and "\n" not in msg, msg
        with pytest.raises(ExecutorUnavailable, match="--address"):
            make_executor("ray", jobs=1, address=address)
    config = TrainConfig(data="gaussian_mixture", model="mlp", steps=2, data_args={"n": 60, "dim": 4, "classes": 2})
    with Store(tmp_path / "runs.sqlite") as store, pytest.raises(ExecutorUnavailable, match="--address"):
        execute([config], store, executor="ray", address=dead_address, progress="none")
    assert not ray.is_initialized()  # nothing was started or joined


def test_kind_ray_unreachable_address_malformed(tmp_path):
    for address in ("nonsense", "head:", "head:99999", "ray://"):
        with pytest.raises(ExecutorUnavailable, match=r"expected a Ray cluster address host:port"):
            RayExecutor(jobs=1, address=address)


@pytest.mark.parametrize("command", ["claims", "run"])
def test_kind_ray_unreachable_address_cli_one_line_exit_2(command, dead_address, tmp_path):
    if command == "claims":
        argv = ["claims", "--tiny", "--only", "recurrent", "--out", str(tmp_path / "out")]
    else:
        spec = tmp_path / "spec.toml"
        spec.write_text('name = "x"\n[base]\ndata = "gaussian_mixture"\nmodel = "mlp"\nsteps = 2\n'
                        '[grid]\nseed = [0]\n')
        argv = ["run", str(spec), "--out", str(tmp_path / "out")]
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # The bound of this test: without the check the command waits for Ray's retries (many minutes) and this
    # raises TimeoutExpired; with it the command returns as soon as the connection is refused.
    proc = subprocess.run([sys.executable, "-m", "normlab.cli", *argv, "--executor", "ray", "--address",
                           dead_address], capture_output=True, text=True, timeout=120, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"normlab {command}: error: --address {dead_address}: expected a running Ray "
                               f"cluster there"), lines[0]
    assert "Connection refused" in lines[0] and "Traceback" not in proc.stderr
