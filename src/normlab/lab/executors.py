"""Executors: run lab units (one :class:`~normlab.lab.train.TrainConfig` each) on this machine or on Ray.

One engine serves ``normlab run`` (specs) and ``normlab claims``: :func:`execute` skips the configs whose
:func:`~normlab.lab.store.run_key` is already stored (returning the stored :class:`RunResult`), runs the others,
and the driver -- the process that called it, and only it -- writes each finished run to the store in one
transaction, tagged with the sweep / claim / level. Workers never touch the store, so a Ray cluster needs no shared
filesystem and a killed driver leaves whole runs or nothing: rerunning the same command resumes.

- :class:`LocalExecutor`: up to ``jobs`` worker processes (``spawn``, one torch thread each by default). A worker
  exits when its parent is gone: ``PR_SET_PDEATHSIG`` (Linux) kills it with the driver, a watchdog thread polling
  ``os.getppid()`` covers other systems and the moment before the prctl, and the end of its pipe to the driver
  (EOF) ends it too. Workers ignore SIGINT (they are started with it ignored), so Ctrl-C reaches the driver only,
  which stops them and raises :class:`Interrupted`. With ``jobs=1`` units run in the driver itself.
- :class:`RayExecutor`: one Ray task per unit on ``ray.init(address=...)`` (an existing cluster) or, without an
  address, on a local Ray instance with ``num_cpus=jobs``; results come back to the driver. Ray is the optional
  extra ``normlab[cluster]``; every node needs the same normlab (a worker whose code digest differs from the
  driver's refuses the unit). An address where nothing accepts a connection fails at once
  (:class:`ExecutorUnavailable` naming --address) instead of waiting out Ray's minutes of retries. A local
  instance dies with its driver, even a SIGKILLed one: a small reaper process (:mod:`._ray_reaper`, Linux) ends
  the Ray processes that would otherwise stay as orphans (the raylet's agents and workers).

``alone=True`` runs the units one after another in the driver (for units that measure time: no neighbour on the
other core). Progress over units: a tqdm bar with an ETA when stdout is a terminal, else plain lines at most every
``every`` seconds (and a heartbeat when no unit finishes for that long); ``progress="none"`` is silent.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .train import RunResult

__all__ = ["execute", "LocalExecutor", "RayExecutor", "make_executor", "Progress", "Tally", "Interrupted",
           "UnitsFailed", "MissingExtra", "ExecutorUnavailable", "EXECUTORS", "CLUSTER_EXTRA"]

EXECUTORS = ("local", "ray")
CLUSTER_EXTRA = "pip install 'normlab[cluster]'"


class MissingExtra(RuntimeError):
    """An optional dependency is not installed; the message names the extra to install."""


class ExecutorUnavailable(RuntimeError):
    """The executor cannot start (e.g. no Ray cluster at ``--address``): nothing can run, so callers stop."""


class UnitsFailed(RuntimeError):
    """Some units raised. Every other unit finished and is stored; ``failures`` is [(run key, error)], ``results``
    the results in input order (None for the failed units)."""

    def __init__(self, failures: list[tuple[str, str]], results: list) -> None:
        self.failures = failures
        self.results = results
        first = failures[0]
        super().__init__(f"{len(failures)} unit(s) failed; first: run {first[0]}: {first[1]}")


@dataclass
class Tally:
    """Units of one command: ``known`` so far (a claims run learns its units claim by claim) and ``stored``."""

    known: int = 0
    stored: int = 0


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`execute`: the workers are stopped, every finished unit is stored."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        super().__init__(self.line())

    def line(self) -> str:
        return (f"interrupted: {self.tally.stored} of {self.tally.known} units stored; "
                f"rerun the same command to resume")


# --------------------------------------------------------------------------------------------------- progress
def _fmt_seconds(s: float) -> str:
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


class Progress:
    """Progress over ``total`` units: ``mode`` "auto" (a tqdm bar if stdout is a terminal, else lines), "bar",
    "lines" or "none". Lines go to ``echo`` (default print) at most every ``every`` seconds, plus one at the end."""

    def __init__(self, total: int, label: str = "", *, done: int = 0, mode: str = "auto", every: float = 10.0,
                 echo: Callable[[str], None] | None = None) -> None:
        if mode not in ("auto", "bar", "lines", "none"):
            raise ValueError(f"Progress: mode={mode!r} is not allowed; expected 'auto', 'bar', 'lines' or 'none'")
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "lines"
        self.total, self.done, self.label, self.every = total, done, label, every
        self.echo = echo or (lambda s: print(s, flush=True))
        self.start = self.last = time.perf_counter()
        self.first = done
        self.bar = None
        if mode == "bar":
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=done, desc=label or None, unit="unit", dynamic_ncols=True,
                                file=sys.stdout, leave=False, smoothing=0.1)
            except ImportError:
                mode = "lines"
        self.mode = mode
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if mode == "lines" and every > 0:
            # a heartbeat even while one long unit runs in this very thread: no silent minute in a log file
            threading.Thread(target=self._beat, name="normlab-progress", daemon=True).start()

    def _beat(self) -> None:
        while not self._stop.wait(1.0):
            self.tick()

    def eta(self) -> float | None:
        ran = self.done - self.first
        if ran <= 0:
            return None
        return (time.perf_counter() - self.start) / ran * (self.total - self.done)

    def _line(self, final: bool = False) -> str:
        elapsed = _fmt_seconds(time.perf_counter() - self.start)
        head = f"  {self.label + ': ' if self.label else ''}{self.done}/{self.total} units"
        if final:
            return f"{head} in {elapsed}"
        eta = self.eta()
        return f"{head}{'' if eta is None else f', ETA {_fmt_seconds(eta)}'} ({elapsed})"

    def _maybe_line(self) -> None:
        with self._lock:
            if self.mode == "lines" and time.perf_counter() - self.last >= self.every and not self._stop.is_set():
                self.last = time.perf_counter()
                self.echo(self._line())

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        else:
            self._maybe_line()

    def tick(self) -> None:
        """A heartbeat line when nothing was printed for ``every`` seconds (lines mode calls it every second)."""
        if self.bar is not None:
            self.bar.refresh()
        else:
            self._maybe_line()

    def write(self, line: str) -> None:
        """A line of its own (under a bar: above it, the bar kept intact)."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        elif self.mode != "none":
            self.echo(line)

    def close(self) -> None:
        if self._stop.is_set():
            return
        with self._lock:
            self._stop.set()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "lines" and self.done > self.first:
            self.echo(self._line(final=True))


# ------------------------------------------------------------------------------------------------ local workers
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def _die_with_parent(parent_pid: int) -> None:
    """Make this process exit when ``parent_pid`` (the driver) is gone, whatever killed it (even ``kill -9``)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            libc.prctl(PR_SET_NAME, b"normlab-worker", 0, 0, 0)  # what `ps`/`top` show
        except (OSError, AttributeError):
            pass  # the watchdog below still ends the worker
    if os.getppid() != parent_pid:  # the driver died before the prctl took effect
        os._exit(0)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="normlab-parent-watchdog", daemon=True).start()


def _worker_main(conn, parent_pid: int, threads: int) -> None:
    """A local worker: receive (index, config), train, send (index, ok, RunResult or error); EOF ends it."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    from .train import train

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the driver closed the pipe or died
            os._exit(0)
        if msg is None:
            return
        index, config = msg
        reply: tuple[int, bool, RunResult | str]
        try:
            result = train(config, progress="none", threads=threads)
            result.model = None  # models are not shipped back (nor stored)
            reply = (index, True, result)
        except Exception as exc:  # noqa: BLE001 - a failing unit is reported; the worker lives on
            reply = (index, False, f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            os._exit(0)


class _Worker:
    def __init__(self, ctx, threads: int) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, os.getpid(), threads), daemon=True,
                                name="normlab-worker")
        self._start_without_sigint()
        child.close()
        self.conn = parent
        self.task: int | None = None

    def _start_without_sigint(self) -> None:
        # A worker born with SIGINT ignored keeps it ignored (Python installs its KeyboardInterrupt handler only
        # over the default disposition), so a Ctrl-C during its start-up cannot print a traceback from it.
        if threading.current_thread() is not threading.main_thread():
            self.proc.start()
            return
        before = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.proc.start()
        finally:
            signal.signal(signal.SIGINT, before)

    def kill(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)


class LocalExecutor:
    """Up to ``jobs`` worker processes on this machine, started on first use and kept for later calls of
    :meth:`run` until :meth:`close`; ``threads`` torch threads per unit (default 1)."""

    name = "local"

    def __init__(self, jobs: int = 1, threads: int | None = None) -> None:
        if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
            raise ValueError(f"LocalExecutor: jobs must be an int >= 1, got {jobs!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"LocalExecutor: threads must be an int >= 1, got {threads!r}")
        self.jobs = jobs
        self.threads = threads or 1
        self.workers: list[_Worker] = []
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch's thread pools

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, units: Sequence[tuple[int, Any]], done: Callable[[int, Any, str | None], None],
            tick: Callable[[], None]) -> None:
        """Run ``units`` [(index, TrainConfig)]; call ``done(index, result, None)`` or ``done(index, None, error)``
        in the driver as each finishes, ``tick()`` about once a second."""
        if self.jobs == 1:
            _run_here(units, done, self.threads)
            return
        from multiprocessing.connection import wait

        pending = list(units)[::-1]
        while len(self.workers) < min(self.jobs, len(pending)):
            self.workers.append(_Worker(self._ctx, self.threads))
        busy: dict[Any, _Worker] = {}
        try:
            while pending or busy:
                for w in self.workers:
                    if w.task is None and pending:
                        index, config = pending.pop()
                        w.conn.send((index, config))
                        w.task = index
                        busy[w.conn] = w
                ready = wait(list(busy) + [w.proc.sentinel for w in busy.values()], timeout=1.0)
                tick()
                for w in list(busy.values()):
                    if w.conn in ready or w.conn.poll():
                        try:
                            index, ok, payload = w.conn.recv()
                        except (EOFError, OSError):
                            self._lost(w, busy, done, pending)
                            continue
                        w.task = None
                        del busy[w.conn]
                        done(index, payload if ok else None, None if ok else payload)
                    elif w.proc.sentinel in ready:
                        self._lost(w, busy, done, pending)
        except BaseException:
            self.abort()
            raise

    def _lost(self, w: _Worker, busy: dict, done, pending: list) -> None:
        """A worker died mid-unit (killed, out of memory): the unit fails, a new worker takes its place."""
        index = w.task
        del busy[w.conn]
        w.kill()  # joins it: its exit code is known only once it is reaped
        code = w.proc.exitcode
        self.workers.remove(w)
        if pending:
            self.workers.append(_Worker(self._ctx, self.threads))
        done(index, None, f"worker process died ({_exit_reason(code)}) while running this unit")

    def abort(self) -> None:
        """Stop every worker now (units in flight are lost; nothing of them was stored)."""
        for w in self.workers:
            w.kill()
        self.workers = []

    def close(self) -> None:
        for w in self.workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in self.workers:
            w.proc.join(timeout=5)
            w.kill()
        self.workers = []


def _exit_reason(code: int | None) -> str:
    """How a worker ended, for the failure line: "killed by SIGKILL" (e.g. the out-of-memory killer) or
    "exit code 3"."""
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _run_here(units, done, threads: int) -> None:
    from .train import train

    for index, config in units:
        try:
            result = train(config, progress="none", threads=threads)
        except Exception as exc:  # noqa: BLE001 - reported like a worker's failure
            done(index, None, f"{type(exc).__name__}: {exc}")
            continue
        result.model = None
        done(index, result, None)


# ----------------------------------------------------------------------------------------------------------- ray
def _ray_unit(config, threads: int, driver_code: str):
    """One unit as a Ray task: train and return the result (the driver stores it)."""
    from .store import code_version
    from .train import train

    mine = code_version()
    if mine != driver_code:
        raise RuntimeError(f"this Ray worker runs normlab code {mine}, the driver {driver_code}; install the same "
                           f"normlab on every node")
    result = train(config, progress="none", threads=threads)
    result.model = None
    return result


class RayExecutor:
    """One Ray task per unit. ``address``: an existing cluster (``ray.init(address=...)``, e.g. "auto" or
    "ray://host:10001"); None starts a local Ray instance with ``num_cpus=jobs``, watched by a reaper process
    that ends it when this process dies. If Ray is already initialized in this process it is used as it is (and
    left running). Raises :class:`MissingExtra` when Ray is not installed, :class:`ExecutorUnavailable` (at
    construction, within ~10 s) when nothing accepts a connection at ``address``."""

    name = "ray"

    def __init__(self, jobs: int = 1, address: str | None = None, threads: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise MissingExtra(f"--executor ray needs Ray, which is not installed: {CLUSTER_EXTRA}") from None
        if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
            raise ValueError(f"RayExecutor: jobs must be an int >= 1, got {jobs!r}")
        self.ray = ray
        self.jobs, self.address, self.threads = jobs, address, threads or 1
        self.owns = False
        self._remote: Any = None  # ray.remote(...)(_ray_unit) once _start ran (a ray RemoteFunction)
        self._reaper: Any = None  # the _ray_reaper process watching a local instance this executor started
        if address and not ray.is_initialized():
            _probe_address(address)

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        ray = self.ray
        if self._remote is not None:
            return
        if not ray.is_initialized():
            import logging

            kw = dict(include_dashboard=False, log_to_driver=False)
            try:
                if self.address:
                    _probe_address(self.address)  # again: the cluster may have gone since __init__
                    with _held_stderr():  # Ray's C++ client logs each failed attempt; our one line replaces them
                        ray.init(address=self.address, logging_level=logging.WARNING, **kw)
                else:  # a private instance of this command: Ray's start-up notes (auth token...) are noise here
                    self._reaper = _start_reaper()  # before ray.init: it records every process Ray starts
                    ray.init(num_cpus=self.jobs, logging_level=logging.ERROR, **kw)
                    _tell_reaper(self._reaper, ray)
            except ExecutorUnavailable:
                self._stop_reaper()
                raise
            except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
                self._stop_reaper()
                what = (f"--address {self.address}: expected a running Ray cluster there, but Ray could not "
                        f"connect to it" if self.address else "cannot start a local Ray instance")
                raise ExecutorUnavailable(f"{what}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
            self.owns = True
        self._remote = ray.remote(num_cpus=1)(_ray_unit)

    def run(self, units, done, tick) -> None:
        if not units:
            return
        from .store import code_version

        self._start()
        ray = self.ray
        code = code_version()
        refs = {self._remote.remote(config, self.threads, code): index for index, config in units}
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
                tick()
                for ref in ready:
                    index = refs.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - RayTaskError wraps the unit's own error
                        cause = getattr(exc, "cause", None) or exc
                        done(index, None, f"{type(cause).__name__}: {cause}")
                        continue
                    done(index, result, None)
        except BaseException:
            for ref in refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort; shutdown follows
                    pass
            self.close()
            raise

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        if self.owns and self.ray.is_initialized():
            self.ray.shutdown()
        self._stop_reaper()
        self.owns = False
        self._remote = None

    def _stop_reaper(self) -> None:
        """End of the pipe: the reaper ends what of the instance outlived ``ray.shutdown()``, then exits."""
        reaper, self._reaper = self._reaper, None
        if reaper is None:
            return
        try:
            reaper.stdin.write(b"bye\n")  # a deliberate close, not a death: leave the driver's own tree alone
            reaper.stdin.close()
            reaper.wait(timeout=30)
        except Exception:  # noqa: BLE001 - best effort: a reaper that hangs is killed, it holds nothing
            reaper.kill()
            reaper.wait()


def _probe_address(address: str, timeout: float = 10.0) -> None:
    """Fail within ``timeout`` seconds when nothing accepts a connection at a Ray ``address``.

    ``ray.init(address=...)`` retries a missing cluster for many minutes (20 attempts of ~35 s in Ray 2.x), so a
    mistyped --address would look like a hang. "host:port" and "ray://host:port" are probed as given; "auto" as
    Ray resolves it (RAY_ADDRESS or the last ``ray start``), or not at all when Ray finds none (then ``ray.init``
    fails at once with its own message), like "local". ``timeout`` bounds the whole probe, the name lookup
    included. Raises :class:`ExecutorUnavailable` naming --address, what was expected and what happened. A
    listener that is not Ray still meets Ray's own connect window."""
    if address == "local":
        return
    target: str | None = address.removeprefix("ray://")
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto")
        except Exception:  # noqa: BLE001 - Ray's resolution failed or moved: ray.init reports it
            return
        if target is None:
            return
    assert target is not None
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ExecutorUnavailable(f"--address {address!r}: expected a Ray cluster address host:port, "
                                  f"ray://host:port or auto")
    try:
        _connect_within(host, int(port), timeout)
    except OSError as exc:
        what = (f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError)
                else exc.strerror or str(exc) or type(exc).__name__)
        raise ExecutorUnavailable(
            f"--address {address}: expected a running Ray cluster there (the head's port from `ray start --head`, "
            f"or ray://host:10001 for Ray Client), but connecting to {host}:{port} failed: {what}") from None


def _connect_within(host: str, port: int, timeout: float) -> None:
    """Open and close one TCP connection to ``host:port`` within ``timeout`` seconds in all: the name lookup too
    (``getaddrinfo`` has no timeout of its own; it runs in a daemon thread, abandoned when it takes too long) and
    every address the name resolves to together (``socket.create_connection`` would spend ``timeout`` on each).
    Raises the first address's OSError, or TimeoutError when the time ran out."""
    import socket

    deadline = time.monotonic() + timeout
    found: list = []

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            found.append(exc)

    resolver = threading.Thread(target=lookup, name="normlab-address-lookup", daemon=True)
    resolver.start()
    resolver.join(timeout)
    if not found:
        raise TimeoutError(f"no answer within {timeout:g} s")
    if isinstance(found[0], OSError):
        raise found[0]
    first: OSError | None = None
    for family, kind, proto, _, sockaddr in found[0]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise first or TimeoutError(f"no answer within {timeout:g} s")
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left)
            sock.connect(sockaddr)
            return
        except OSError as exc:
            first = first or exc
        finally:
            sock.close()
    raise first or OSError(f"{host} resolved to no address")


@contextlib.contextmanager
def _held_stderr():
    """Hold what is written to file descriptor 2 (also by C++ code) inside the block: written out if the block
    succeeds, dropped if it raises (the caller's one-line error says it all)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2: nothing to hold
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                held.seek(0)
                text = held.read()
                if text:
                    os.write(2, text)


def _start_reaper():
    """The watcher that ends this driver's local Ray instance when the driver dies (Linux), or None."""
    import subprocess

    if not sys.platform.startswith("linux") or not os.path.isdir("/proc"):
        return None
    from . import _ray_reaper

    try:
        # a session of its own: a signal to the driver's whole group (terminal hangup, `timeout`, kill -- -PGID)
        # must not end the reaper together with the driver it outlives on purpose
        reaper = subprocess.Popen([sys.executable, "-I", _ray_reaper.__file__, str(os.getpid())],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                                  start_new_session=True)
    except OSError:  # no reaper is a leak on a crash, not a reason to refuse the run
        return None
    assert reaper.stdout is not None
    reaper.stdout.read(1)  # it has taken its first look at this process's tree (b"" if it died: no reaper then)
    reaper.stdout.close()
    return reaper


def _tell_reaper(reaper, ray) -> None:
    """Send the session name, so the reaper also finds a worker Ray starts in its last moments."""
    if reaper is None:
        return
    try:
        reaper.stdin.write(ray.get_runtime_context().get_session_name().encode() + b"\n")
        reaper.stdin.flush()
    except Exception:  # noqa: BLE001 - the recorded tree is enough without the name
        try:
            reaper.stdin.write(b"\n")  # an empty name keeps the line protocol (name, then maybe "bye")
            reaper.stdin.flush()
        except OSError:
            pass


def make_executor(executor: str = "local", *, jobs: int = 1, address: str | None = None,
                  threads: int | None = None):
    """A :class:`LocalExecutor` or :class:`RayExecutor` by name (errors name the option and the allowed values)."""
    if executor == "local":
        if address:
            raise ValueError("--address is for --executor ray (a Ray cluster); the local executor takes --jobs")
        return LocalExecutor(jobs, threads)
    if executor == "ray":
        return RayExecutor(jobs, address, threads)
    raise ValueError(f"--executor {executor!r} is not allowed; expected one of {list(EXECUTORS)}")


# ------------------------------------------------------------------------------------------------------ execute
def execute(configs: Sequence, store, *, executor: Any = "local", jobs: int = 1, address: str | None = None,
            threads: int | None = None, tags: dict | None = None, params: Sequence[dict] | None = None,
            alone: bool = False, progress: Any = "auto", label: str = "", tally: Tally | None = None,
            on_result: Callable[[int, Any, bool], None] | None = None) -> list:
    """Run every config whose run key is not in ``store`` and return one RunResult per config, in order.

    ``configs``: TrainConfigs. ``store``: an open :class:`~normlab.lab.store.Store` (written by this process only,
    one transaction per run). ``executor``: "local", "ray", or an executor object (kept open for the caller's
    next call; a name makes one for this call and closes it). ``jobs``/``address``/``threads``: see
    :func:`make_executor`. ``tags``: stored with every run: ``sweep``, ``claim``, ``level``. ``params``: per-config
    dicts stored with each run (a spec's grid values). ``alone``: run the units one after another in this
    process. ``progress``: "auto"|"bar"|"lines"|"none" or a :class:`Progress`. ``tally``: counts of the whole
    command, for the line of :class:`Interrupted`. ``on_result(index, result, was_stored)`` is called as each
    unit is known (stored ones first).

    Stored units come back from the store (``load_result``, probes included); units that raise do not stop the
    others: when all are done, :class:`UnitsFailed` lists them (nothing of them stored, so a rerun retries them).
    Ctrl-C stops the workers and raises :class:`Interrupted` (a KeyboardInterrupt) carrying the counts.
    """
    from .store import code_version, run_key

    tags = dict(tags or {})
    unknown = sorted(set(tags) - {"sweep", "claim", "level"})
    if unknown:
        raise ValueError(f"execute: unknown tag(s) {unknown}; expected some of ['claim', 'level', 'sweep']")
    if params is not None and len(params) != len(configs):
        raise ValueError(f"execute: {len(params)} params for {len(configs)} configs")
    code = code_version()
    keys = [run_key(c, code) for c in configs]
    results: list = [None] * len(configs)
    tally = tally if tally is not None else Tally()
    todo: list[tuple[int, Any]] = []
    first_of: dict[str, int] = {}
    copies: dict[int, list[int]] = {}
    for i, (config, key) in enumerate(zip(configs, keys)):
        if key in first_of:  # the same config twice in one call: run once
            copies.setdefault(first_of[key], []).append(i)
            continue
        first_of[key] = i
        if store.has(key):
            results[i] = store.load_result(key)
        else:
            todo.append((i, config))
    n_unique = len(first_of)
    tally.known += n_unique
    tally.stored += n_unique - len(todo)
    if on_result is not None:
        for i, r in enumerate(results):
            if r is not None:
                on_result(i, r, True)
    failures: list[tuple[str, str]] = []
    if not todo:
        _fill_copies(results, copies)
        return results

    owned = isinstance(executor, str)
    ex = make_executor(executor, jobs=jobs, address=address, threads=threads) if owned else executor
    own_bar = not isinstance(progress, Progress)
    bar = Progress(n_unique, label, done=n_unique - len(todo), mode=progress or "none") if own_bar else progress

    def done(index: int, result, error: str | None) -> None:
        if error is not None:
            failures.append((keys[index], error))
            bar.write(f"  {label + ': ' if label else ''}run {keys[index]} failed: {error}")
        else:
            store.save(result, params=params[index] if params is not None else None, code=code, **tags)
            results[index] = result
            tally.stored += 1
            if on_result is not None:
                on_result(index, result, False)
        bar.update()

    try:
        if alone:
            _run_here(todo, done, 1)
        else:
            ex.run(todo, done, bar.tick)
    except KeyboardInterrupt:
        ex.abort()
        if own_bar:
            bar.close()
        # the count comes from the store: a Ctrl-C can land after a unit's COMMIT but before `done` counted it
        tally.stored += sum(1 for i, _ in todo if results[i] is None and store.has(keys[i]))
        raise Interrupted(tally) from None
    finally:
        if owned:
            ex.close()
    if own_bar:
        bar.close()
    _fill_copies(results, copies)
    if failures:
        raise UnitsFailed(failures, results)
    return results


def _fill_copies(results: list, copies: dict[int, list[int]]) -> None:
    for first, others in copies.items():
        for i in others:
            results[i] = results[first]
