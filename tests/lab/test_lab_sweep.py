"""normlab.lab.store / sweep / plots and the CLI: atomic storage, spec validation, resume after kill -9."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the data tests write the IDX files used here

from normlab.cli import main
from normlab.lab import data
from normlab.lab.store import DB_NAME, Store, open_store, run_key
from normlab.lab.sweep import SpecError, load_spec, parse_spec, run_grid
from normlab.lab.train import TrainConfig, train

MIX = {"n": 200, "dim": 5, "classes": 3, "seed": 0}

SPEC = """
name = "tiny"
[base]
data = "gaussian_mixture"
model = "mlp"
steps = {steps}
batch_size = 16
eval_every = 5
[base.data_args]
n = 200
dim = 5
classes = 3
[base.model_args]
depth = 1
width = 8
[grid]
norm = ["bn", "none"]
seed = {seeds}
"""


def _spec(tmp_path: Path, steps: int = 10, seeds=(0, 1), text: str | None = None) -> Path:
    p = tmp_path / "spec.toml"
    p.write_text(text if text is not None else SPEC.format(steps=steps, seeds=list(seeds)))
    return p


def _result(**kw):
    config = TrainConfig(data="gaussian_mixture", data_args=MIX, model="mlp", model_args={"depth": 1, "width": 8},
                         steps=6, batch_size=16, eval_every=3, **kw)
    return train(config, progress="none")


# ------------------------------------------------------------------------------------------------------------ store
def test_store_round_trip_and_no_duplicates(tmp_path):
    r = _result()
    key = run_key(r.config)  # the store's key: the whole config plus the code digest
    with Store(tmp_path / "db.sqlite") as store:
        assert store.save(r, sweep="s", params={"norm": "bn"})
        assert not store.save(r, sweep="other")  # same config, same key: stored once
        assert store.count() == {"runs": 1, "steps": 6, "evals": 3}
        rec = store.get(key[:5])
        assert rec.key == key and rec.sweep == "s" and rec.params == {"norm": "bn"}
        assert rec.config == r.config.to_dict() and rec.final == r.final and not rec.diverged
        assert [tuple(s.values()) for s in store.steps(key)] == r.step_rows
        got = store.evals(key)
        assert got[1:] == r.evals[1:] and math.isnan(got[0]["train_loss"]) and got[0]["val_acc"] == r.evals[0]["val_acc"]


def test_store_nan_and_divergence(tmp_path):
    r = _result(norm="none", lr=1e12, optimizer="sgd")
    assert r.diverged
    with Store(tmp_path / "db.sqlite") as store:
        store.save(r)
        rec = store.get(run_key(r.config))
        assert rec.diverged and rec.diverged_step == r.diverged_step
        # the step-0 evaluation has no training steps before it: NaN goes in as NULL and comes back as NaN
        assert math.isnan(store.evals(run_key(r.config))[0]["train_loss"])


def test_a_save_that_fails_midway_stores_nothing(tmp_path):
    r = _result()
    r.step_rows[3] = r.step_rows[2]  # duplicate step number: the steps insert violates the primary key
    with Store(tmp_path / "db.sqlite") as store:
        with pytest.raises(sqlite3.IntegrityError):
            store.save(r)
        assert store.count() == {"runs": 0, "steps": 0, "evals": 0}


def test_store_lookup_errors(tmp_path):
    with Store(tmp_path / "db.sqlite") as store:
        for seed in range(20):
            store.save(_result(seed=seed))
        with pytest.raises(KeyError, match=r"no run with a key starting with 'zz'"):
            store.get("zz")
        first = sorted(store.keys())[0][0]
        if sum(k.startswith(first) for k in store.keys()) > 1:
            with pytest.raises(KeyError, match=r"runs have keys starting with .*give more characters"):
                store.get(first)
    with pytest.raises(ValueError, match=r"no such run database"):
        open_store(tmp_path / "missing")
    (tmp_path / "junk.sqlite").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ValueError, match=r"junk\.sqlite: expected a normlab SQLite run database"):
        Store(tmp_path / "junk.sqlite")


# ------------------------------------------------------------------------------------------------------------ specs
def test_grid_expansion_and_dotted_keys(tmp_path):
    text = SPEC.format(steps=5, seeds=[0, 1, 2]) + "model_args.width = [4, 8]\nlr = [0.001, 0.01]\n"
    spec = load_spec(_spec(tmp_path, text=text))
    assert len(spec.runs) == 2 * 3 * 2 * 2 and len(set(spec.keys)) == 24
    config, params = spec.runs[-1]
    assert params == {"norm": "none", "seed": 2, "model_args.width": 8, "lr": 0.01}
    assert config.model_args == {"depth": 1, "width": 8} and config.data_args["n"] == 200
    assert spec.out == tmp_path / "normlab-runs" and spec.name == "tiny"


@pytest.mark.parametrize(
    "doc,match",
    [
        ({"bsae": {}}, r"unknown top-level key\(s\) \['bsae'\]; allowed: \['name', 'out'"),
        ({"base": {"lerning_rate": 1}}, r"base\.lerning_rate is not a TrainConfig field; allowed: \['data'"),
        ({"grid": {"optimizer": ["adam", "rmsprop"]}}, r"optimizer='rmsprop' is not allowed; expected one of \['adam', 'sgd'\]"),
        ({"grid": {"lr": 0.1}}, r"grid\.lr must be a non-empty list of values, got 0\.1"),
        ({"grid": {"lr": []}}, r"grid\.lr must be a non-empty list"),
        ({"grid": {"model": ["mlp", "vgg"]}}, r"grid\.model='vgg' is not a model; allowed: \['cnn'"),
        ({"base": {"data": "imagenet"}}, r"base\.data='imagenet' is not a data set; allowed: \['cifar10'"),
        ({"grid": {"model_args": {"deepth": [1]}}}, r"model_args \['deepth'\] are not options of model 'mlp'; allowed: \[.*'depth'"),
        ({"grid": {"norm": ["bn", "bogus"]}}, r"run \[norm='bogus'\]: cannot build the norm: .*'bogus'"),
        ({"grid": {"model_args": {"init": ["he", "glorot"]}}}, r"cannot build the model: mlp: init='glorot' is not allowed; expected one of"),
        ({"grid": {"seeds": [1]}}, r"grid\.seeds is not a TrainConfig field"),
    ],
)
def test_bad_specs_fail_before_any_run_naming_key_and_allowed_values(tmp_path, doc, match):
    full = {"base": {"data": "gaussian_mixture", "model": "mlp", "steps": 2, **doc.get("base", {})}}
    full.update({k: v for k, v in doc.items() if k != "base"})
    with pytest.raises(SpecError, match=match):
        parse_spec(full, where="x.toml", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_run_reports_spec_errors_and_creates_nothing(tmp_path, capsys):
    p = _spec(tmp_path, text='[grid]\nnorm = ["bn"]\nbatch_size = [0]\n')
    assert main(["run", str(p)]) == 2
    assert "batch_size=0 is not allowed; expected an int >= 1" in capsys.readouterr().err
    assert not (tmp_path / "normlab-runs").exists()
    (tmp_path / "bad.toml").write_text("[grid\n")
    assert main(["run", str(tmp_path / "bad.toml")]) == 2
    assert "bad.toml: expected TOML, found a syntax error" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------- sweeps
def test_run_grid_then_rerun_skips_everything(tmp_path):
    spec = _spec(tmp_path)
    s1 = run_grid(spec, jobs=1, echo=None, threads=1)
    assert (s1.total, s1.skipped, s1.ran, s1.failed) == (4, 0, 4, [])
    with open_store(tmp_path / "normlab-runs") as store:
        first = {r.key: r.created for r in store.runs()}
        assert set(first) == set(s1.keys)
        assert store.count() == {"runs": 4, "steps": 40, "evals": 4 * 3}
    s2 = run_grid(spec, jobs=1, echo=None, threads=1)
    assert (s2.skipped, s2.ran) == (4, 0)
    with open_store(tmp_path / "normlab-runs") as store:
        assert {r.key: r.created for r in store.runs()} == first


def _count_runs(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # tables not created yet
        return 0


@pytest.mark.slow
def test_kill_9_mid_sweep_then_rerun_resumes(tmp_path):
    total, steps = 8, 100
    spec = _spec(tmp_path, steps=steps, seeds=range(4))
    db = tmp_path / "normlab-runs" / DB_NAME
    cmd = [sys.executable, "-m", "normlab.cli", "run", str(spec), "--threads", "1", "--jobs", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env=os.environ)
    deadline = time.time() + 120
    try:
        while _count_runs(db) < 1 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole session: the command and its worker processes
        proc.wait()
    stored_before = _count_runs(db)
    assert 1 <= stored_before < total, f"kill came too late or too early: {stored_before} runs stored"
    with open_store(db) as store:
        before = {r.key: r.created for r in store.runs()}
        # every stored run is complete: all its steps and evaluations are there
        for key in before:
            assert len(store.steps(key)) == steps and store.evals(key)[-1]["step"] == steps
        # a run trained in a worker process equals the same config trained here
        rec = store.get(next(iter(before)))
        again = train(TrainConfig.from_dict(rec.config), progress="none")
        assert [s["loss"] for s in store.steps(rec.key)] == again.history("loss")
    out = subprocess.run(cmd[:-1] + ["1"], capture_output=True, text=True, env=os.environ, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{total} runs, {stored_before} already stored, {total - stored_before} to run" in out.stdout
    with open_store(db) as store:
        runs = store.runs()
        assert len(runs) == total and store.count()["steps"] == total * steps
        assert {r.key: r.created for r in runs if r.key in before} == before  # finished runs were not redone
        assert {r.key for r in runs} == set(load_spec(spec).keys)


# ---------------------------------------------------------------------------------------------------------- CLI
def test_cli_ls_show_export_plot(tmp_path, capsys):
    spec = _spec(tmp_path)
    assert main(["run", str(spec), "--jobs", "1", "--threads", "1"]) == 0
    out_dir = tmp_path / "normlab-runs"
    capsys.readouterr()
    assert main(["ls", str(out_dir)]) == 0
    listing = capsys.readouterr().out
    assert "4 runs" in listing and "norm=bn seed=0" in listing and "norm=none seed=1" in listing
    with open_store(out_dir) as store:
        rec = store.runs()[0]
        n_steps = len(store.steps(rec.key))
    assert main(["show", rec.key[:8], "--db", str(out_dir)]) == 0
    shown = capsys.readouterr().out
    assert rec.key in shown and f"{rec.final['val_acc']:.4f}" in shown

    assert main(["export", str(out_dir)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4 and {r["key"] for r in rows} >= {rec.key}
    mine = next(r for r in rows if r["key"] == rec.key)
    assert float(mine["final.val_acc"]) == pytest.approx(rec.final["val_acc"]) and mine["config.norm"] == rec.config["norm"]
    target = tmp_path / "steps.json"
    assert main(["export", str(out_dir), "--table", "steps", "--format", "json", "-o", str(target)]) == 0
    steps = json.loads(target.read_text())
    assert len(steps) == 4 * n_steps and set(steps[0]) == {"key", "step", "epoch", "loss", "acc", "grad_norm", "lr", "time"}

    assert main(["plot", str(spec)]) == 0
    png = out_dir / "tiny-val_acc.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "loss.svg"
    assert main(["plot", str(out_dir / DB_NAME), "--metric", "step_loss", "-o", str(svg)]) == 0
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and "norm=bn (n=2)" in text
    capsys.readouterr()
    assert main(["show", "zzzz", "--db", str(out_dir)]) == 2
    assert "no run with a key starting with 'zzzz'" in capsys.readouterr().err


def test_group_curves_mean_and_std_over_seeds(tmp_path):
    from normlab.lab.plots import group_curves

    run_grid(_spec(tmp_path), jobs=1, echo=None, threads=1)
    with open_store(tmp_path / "normlab-runs") as store:
        curves = group_curves(store, store.runs(), metric="val_loss")
        xs, mean, std, n = curves["norm=bn"]
        runs = [r for r in store.runs() if r.config["norm"] == "bn"]
        a, b = ([e["val_loss"] for e in store.evals(r.key)] for r in runs)
        assert n == 2 and list(xs) == [0, 5, 10]
        assert mean == pytest.approx([(u + v) / 2 for u, v in zip(a, b)])
        assert std == pytest.approx([abs(u - v) / 2 for u, v in zip(a, b)])
        with pytest.raises(ValueError, match=r"unknown metric 'accuracy'; expected one of \['train_loss'"):
            group_curves(store, store.runs(), metric="accuracy")


def test_cli_run_download_prefetches_into_root(tmp_path, monkeypatch, capsys):
    from test_lab_data import _write_mnist

    src = tmp_path / "src"
    src.mkdir()
    _write_mnist(src, compress=True)
    calls = []

    def fake(url, dest, *, md5=None):
        calls.append(url)
        dest.write_bytes((src / url.rsplit("/", 1)[1]).read_bytes())
        return dest

    monkeypatch.setattr(data, "download", fake)
    root = tmp_path / "mnist"
    text = f'[base]\ndata = "mnist"\nmodel = "seed_mlp"\nsteps = 3\nbatch_size = 8\ndata_args = {{root = "{root}"}}\n'
    spec = _spec(tmp_path, text=text)
    assert main(["run", str(spec), "--jobs", "1", "--threads", "1", "--download"]) == 0
    assert len(calls) == 4 and "fetching mnist into" in capsys.readouterr().out
    with open_store(tmp_path / "normlab-runs") as store:
        (rec,) = store.runs()
        assert rec.config["data_args"] == {"root": str(root)}  # download is not part of the run's identity
