"""Kind: the --address probe bounded in every step. ``socket.create_connection``'s timeout covers each connect but
not the name lookup (``getaddrinfo`` blocks for the resolver's own timeouts and retries: a minute and more when
the DNS server does not answer) and is spent again for every address a name resolves to. The probe must give up
within its ``timeout`` in total, with its one line naming --address. A resolver that never answers is stood in by
a ``getaddrinfo`` that blocks until the test ends; no Ray is needed."""

from __future__ import annotations

import socket
import threading

import pytest

from normlab.lab import executors
from normlab.lab.executors import ExecutorUnavailable


@pytest.fixture
def silent_resolver(monkeypatch):
    release = threading.Event()

    def getaddrinfo(*args, **kwargs):
        release.wait(600)  # the resolver that does not answer
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    release.set()


def test_kind_ray_probe_bounded_name_lookup(silent_resolver):
    outcome: list = []

    def probe():
        try:
            executors._probe_address("head-node:6379", timeout=0.5)
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - the test reads it below
            outcome.append(exc)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    # The bound of this test: without a bound on the lookup the probe waits for the resolver (here until the
    # fixture releases it) and the thread is still running after 60 s; with it, it returns after ~0.5 s.
    t.join(60)
    assert not t.is_alive(), "the probe waited for the name lookup beyond its timeout"
    assert isinstance(outcome[0], ExecutorUnavailable), outcome
    msg = str(outcome[0])
    assert msg.startswith("--address head-node:6379: expected a running Ray cluster there"), msg
    assert "head-node:6379 failed: no answer within 0.5 s" in msg and "\n" not in msg, msg
