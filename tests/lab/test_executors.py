"""normlab.lab.executors (local executor) and the store's additions: skip what is stored, the driver alone writes,
stored results equal fresh ones, failures and progress; workers gone after kill -9 / SIGTERM / Ctrl-C of the
driver (real processes, checked in /proc)."""

from __future__ import annotations

import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _procs import alive, count_runs, descendants, wait_for, workers_of

from normlab.lab.executors import Interrupted, LocalExecutor, Progress, Tally, UnitsFailed, execute, make_executor
from normlab.lab.store import DB_NAME, Store, code_version, run_key
from normlab.lab.train import TrainConfig, train

MIX = {"n": 200, "dim": 5, "classes": 3, "seed": 0}


def _config(seed=0, norm="bn", steps=6, **kw) -> TrainConfig:
    kw.setdefault("model_args", {"depth": 1, "width": 8})
    return TrainConfig(data="gaussian_mixture", data_args=MIX, model="mlp", norm=norm, steps=steps, batch_size=16,
                       eval_every=3, seed=seed, **kw)


def _same(a, b, timed: bool = True) -> bool:
    """Two RunResults hold the same run (NaN equal to NaN); ``timed=False`` leaves out the wall-clock columns
    (two computations of one run differ only there)."""
    def eq(x, y):
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return True
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(eq(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            return len(x) == len(y) and all(eq(u, v) for u, v in zip(x, y))
        return x == y

    def rows(r):
        return r.step_rows if timed else [row[:-1] for row in r.step_rows]  # "time" is the last step column

    def evals(r):
        return r.evals if timed else [{k: v for k, v in e.items() if k != "time"} for e in r.evals]

    return (a.config == b.config and eq(rows(a), rows(b)) and eq(evals(a), evals(b)) and eq(a.final, b.final)
            and a.diverged == b.diverged and a.diverged_step == b.diverged_step)


# ------------------------------------------------------------------------------------------------------- store
def test_run_key_is_config_plus_code(monkeypatch):
    c = _config()
    assert run_key(c) == run_key(_config()) and len(run_key(c)) == 16
    assert run_key(c) != run_key(_config(seed=1))
    assert run_key(c, "other-code") != run_key(c)  # other code: another run
    assert len(code_version()) == 16


def test_load_result_equals_the_fresh_result_probes_included(tmp_path):
    r = _config(norm="none", lr=1e12, optimizer="sgd")  # diverges: NaN metrics and a divergence step
    fresh = train(r, progress="none")
    fresh.probes = {"dead_fraction": [0.25, float("nan")], "layers": {"0": {"p50": 1.5}}}
    plain = train(_config(), progress="none")
    with Store(tmp_path / DB_NAME) as store:
        assert store.save(fresh, claim="dying-relu", level="tiny") and store.save(plain, sweep="s", params={"a": 1})
        back = store.load_result(run_key(fresh.config))
        assert _same(back, fresh) and back.diverged and back.model is None
        assert _same(store.load_result(run_key(plain.config)), plain)
        rec = store.get(run_key(fresh.config))
        assert (rec.claim, rec.level, rec.code, rec.sweep) == ("dying-relu", "tiny", code_version(), "")
        assert rec.probes["dead_fraction"][0] == 0.25 and math.isnan(rec.probes["dead_fraction"][1])
        assert rec.probes["layers"] == {"0": {"p50": 1.5}}
        assert [r.key for r in store.runs(claim="dying-relu")] == [rec.key]
        with pytest.raises(KeyError, match=r"no run with key 'nope'"):
            store.load_result("nope")


def test_an_older_database_is_migrated_in_place(tmp_path):
    """A database of the first store (no claim/level/code/probes columns) opens, keeps its runs, takes new ones."""
    db = tmp_path / DB_NAME
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE runs (key TEXT PRIMARY KEY, sweep TEXT, config TEXT NOT NULL, params TEXT NOT NULL,
            final TEXT NOT NULL, diverged INTEGER NOT NULL, diverged_step INTEGER, wall_time REAL, created REAL,
            version TEXT);
        INSERT INTO runs VALUES ('0123456789abcdef', 'old', '{"model": "mlp"}', '{"norm": "bn"}',
            '{"val_acc": 0.5}', 0, NULL, 1.0, 1.0, '0.1.0');
    """)
    con.commit()
    con.close()
    with Store(db) as store:
        (old,) = store.runs()
        assert (old.key, old.sweep, old.claim, old.level, old.code, old.probes) == (
            "0123456789abcdef", "old", "", "", "", {})
        assert store.save(train(_config(), progress="none"), claim="c", level="tiny")
        assert {r.claim for r in store.runs()} == {"", "c"}
    with Store(db) as store:  # opening again changes nothing
        assert len(store.runs()) == 2


# ----------------------------------------------------------------------------------------------------- execute
def test_execute_skips_stored_units_and_returns_them_from_the_store(tmp_path):
    configs = [_config(seed=s, norm=n) for s in (0, 1) for n in ("bn", "none")]
    with Store(tmp_path / DB_NAME) as store:
        tally = Tally()
        first = execute(configs[:3], store, jobs=1, tags={"claim": "x", "level": "tiny"}, progress="none",
                        tally=tally)
        assert (tally.known, tally.stored) == (3, 3) and store.count()["runs"] == 3
        created = {r.key: r.created for r in store.runs()}
        seen = []
        again = execute(configs + [configs[0]], store, jobs=1, tags={"claim": "x", "level": "tiny"},
                        progress="none", on_result=lambda i, r, stored: seen.append((i, stored)))
        assert sorted(seen) == [(0, True), (1, True), (2, True), (3, False)]  # one new unit ran
        assert {r.key: r.created for r in store.runs() if r.key in created} == created  # none stored twice
        assert store.count()["runs"] == 4 and {r.claim for r in store.runs()} == {"x"}
        for a, b in zip(first, again):
            assert _same(a, b)
        assert again[4] is again[0]  # the same config twice in one call runs once
        assert _same(again[3], train(configs[3], progress="none"), timed=False)


def test_local_workers_store_what_one_process_computes(tmp_path):
    configs = [_config(seed=s, norm=n) for s in (0, 1) for n in ("bn", "none")]
    with Store(tmp_path / "a.sqlite") as a, Store(tmp_path / "b.sqlite") as b:
        with LocalExecutor(jobs=2) as ex:
            pooled = execute(configs, a, executor=ex, progress="none")
            assert len(ex.workers) == 2
            assert execute(configs, a, executor=ex, progress="none")  # all stored: nothing sent to the workers
        here = execute(configs, b, jobs=1, progress="none")
        assert a.keys() == b.keys() == {run_key(c) for c in configs}
        for x, y in zip(pooled, here):
            assert _same(x, y, timed=False)


def test_failing_units_are_reported_the_others_stored_and_a_rerun_retries(tmp_path):
    bad = _config(model_args={"depth": 1, "width": 8, "activation": "bogus"})  # fails when the model is built
    configs = [_config(seed=0), bad, _config(seed=1)]
    with Store(tmp_path / DB_NAME) as store:
        for jobs in (1, 2):
            with pytest.raises(UnitsFailed, match=r"1 unit\(s\) failed; first: run [0-9a-f]{16}: ValueError: .*bogus"
                               ) as info:
                execute(configs, store, jobs=jobs, progress="none")
            assert info.value.failures[0][0] == run_key(bad)
            assert info.value.results[1] is None and info.value.results[0] is not None
            assert store.keys() == {run_key(configs[0]), run_key(configs[2])}


def test_make_executor_names_the_allowed_values():
    with pytest.raises(ValueError, match=r"--executor 'dask' is not allowed; expected one of \['local', 'ray'\]"):
        make_executor("dask")
    with pytest.raises(ValueError, match=r"--address is for --executor ray"):
        make_executor("local", address="auto")
    with pytest.raises(ValueError, match=r"jobs must be an int >= 1, got 0"):
        make_executor("local", jobs=0)


def test_progress_lines_when_not_a_terminal_and_a_bar_on_one(capsys):
    lines = []
    p = Progress(4, "claim-x", done=1, mode="auto", every=0.0, echo=lines.append)
    assert p.mode == "lines"  # pytest's captured stdout is not a terminal
    p.update()
    p.tick()
    p.close()
    p.close()  # once is enough
    assert len(lines) == 3 and all("\r" not in s for s in lines)
    assert re.fullmatch(r"  claim-x: 2/4 units, ETA \d+s \(\d+s\)", lines[0])
    assert re.fullmatch(r"  claim-x: 2/4 units in \d+s", lines[-1])
    beats = []
    quiet = Progress(2, "long-unit", mode="lines", every=0.5, echo=beats.append)
    assert wait_for(lambda: len(beats) >= 1, 10.0)  # a heartbeat while nothing finishes, from its own thread
    quiet.close()
    assert beats[0].startswith("  long-unit: 0/2 units (")
    bar = Progress(3, "spec", mode="bar")
    bar.update(3)
    bar.close()
    drawn = capsys.readouterr().out
    assert drawn.startswith("\rspec:") and "/3 [" in drawn and "unit/s" in drawn  # a tqdm bar, redrawn in place


# -------------------------------------------------------------------------------------- the driver's processes
SPEC = """
name = "long"
[base]
data = "gaussian_mixture"
model = "mlp"
steps = {steps}
batch_size = 16
eval_every = 50
[base.data_args]
n = 400
dim = 10
classes = 3
[base.model_args]
depth = 2
width = 32
[grid]
norm = ["bn", "none"]
seed = [0, 1, 2, 3]
"""


def _driver(tmp_path: Path, steps: int) -> tuple[subprocess.Popen, Path]:
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(steps=steps))
    cmd = [sys.executable, "-m", "normlab.cli", "run", str(spec), "--jobs", "2", "--threads", "1"]
    from _procs import default_signals

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=os.environ, preexec_fn=default_signals)
    return proc, tmp_path / "normlab-runs" / DB_NAME


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_worker_survives_the_driver(tmp_path, sig):
    """kill -9 (or SIGTERM) of `normlab run`'s driver alone: within 5 s no process it started remains."""
    proc, db = _driver(tmp_path, steps=200_000)  # units far longer than the test: the workers are mid-unit
    try:
        assert wait_for(lambda: len(workers_of(proc.pid)) == 2, 120), proc.stderr.read() if proc.poll() else ""
        family = descendants(proc.pid)
        os.kill(proc.pid, sig)  # the driver only, not its process group
        proc.wait(timeout=30)
        assert wait_for(lambda: not alive(family), 5.0), f"still running 5 s after the driver died: {alive(family)}"
        assert count_runs(db) == 0  # nothing half-stored
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in alive(descendants(proc.pid)):
            os.kill(p, signal.SIGKILL)


@pytest.mark.slow
def test_ctrl_c_stops_workers_prints_one_line_and_a_rerun_resumes(tmp_path):
    proc, db = _driver(tmp_path, steps=300)
    try:
        assert wait_for(lambda: count_runs(db) >= 1, 180), "no run was stored"
        family = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    m = re.fullmatch(r"interrupted: (\d+) of 8 units stored; rerun the same command to resume", lines[0])
    assert m and 1 <= int(m.group(1)) < 8, lines
    assert wait_for(lambda: not alive(family), 5.0), alive(family)
    stored = int(m.group(1))
    assert count_runs(db) == stored
    with Store(db) as store:
        before = {r.key: r.created for r in store.runs()}
    rerun = subprocess.run([sys.executable, "-m", "normlab.cli", "run", str(tmp_path / "spec.toml"), "--jobs", "1",
                            "--threads", "1"], capture_output=True, text=True, env=os.environ, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"8 runs, {stored} already stored, {8 - stored} to run" in rerun.stdout
    with Store(db) as store:
        runs = store.runs()
        assert len(runs) == 8 and {r.key: r.created for r in runs if r.key in before} == before


def test_interrupted_line():
    assert str(Interrupted(Tally(known=9, stored=4))) == (
        "interrupted: 4 of 9 units stored; rerun the same command to resume")


@pytest.mark.slow
def test_worker_killed_mid_unit_fails_that_unit_naming_the_signal(tmp_path):
    """A worker killed under a unit (the out-of-memory killer's SIGKILL): that unit fails with the signal named
    (it read 'exit code None': the code was taken before the process was reaped), the other unit is stored, and no
    process is left."""
    import threading

    long_unit, short_unit = _config(seed=0, steps=500_000), _config(seed=1)
    ex = LocalExecutor(jobs=2)
    killed: list[int] = []

    def kill_the_long_units_worker():
        def busy():
            return [w for w in ex.workers if w.task == 0 and w.proc.pid]
        if wait_for(lambda: busy(), 120):
            pid = busy()[0].proc.pid
            wait_for(lambda: False, 1.0)  # let it get into the unit
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    threading.Thread(target=kill_the_long_units_worker, daemon=True).start()
    with Store(tmp_path / DB_NAME) as store, ex:
        with pytest.raises(UnitsFailed) as info:
            execute([long_unit, short_unit], store, executor=ex, progress="none")
        assert killed, "the long unit's worker was never seen busy"
        [(key, error)] = info.value.failures
        assert key == run_key(long_unit) and error == "worker process died (killed by SIGKILL) while running this unit"
        assert store.keys() == {run_key(short_unit)}
        pids = [w.proc.pid for w in ex.workers]
    assert wait_for(lambda: not alive(pids + killed), 5.0), alive(pids + killed)
