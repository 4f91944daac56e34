"""The `normlab` command as a careless user meets it (issue 14): one line saying what was expected and what arrived,
exit 2, no traceback; Ctrl-C exits 130 with one line; --version, a --help written for users; the read verbs find
the store (claims' units included) or say where they looked."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "lab"))

from normlab.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
SPEC = """
name = "tiny"
[base]
data = "gaussian_mixture"
model = "mlp"
steps = 4
batch_size = 16
[base.data_args]
n = 100
dim = 5
classes = 3
[base.model_args]
depth = 1
width = 8
[grid]
norm = ["bn", "none"]
"""


def _run(argv, capsys) -> tuple[int, str, str]:
    """main(argv) -> (exit code, stdout, stderr); argparse's exits count as exit codes."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def spec(tmp_path) -> Path:
    p = tmp_path / "spec.toml"
    p.write_text(SPEC)
    return p


# ------------------------------------------------------------------------------------- bad numbers of things
@pytest.mark.parametrize("argv,option", [
    (["run", "{spec}", "--jobs", "0"], "--jobs"),
    (["run", "{spec}", "--jobs", "two"], "--jobs"),
    (["run", "{spec}", "--threads", "0"], "--threads"),
    (["claims", "--tiny", "--jobs", "0", "--out", "{out}"], "--jobs"),
    (["claims", "--tiny", "--seeds", "0", "--out", "{out}"], "--seeds"),
    (["claims", "--tiny", "--seeds", "-3", "--out", "{out}"], "--seeds"),
])
def test_kind_cli_counts_below_one(argv, option, spec, tmp_path, capsys):
    argv = [a.format(spec=spec, out=tmp_path / "out") for a in argv]
    code, _, err = _run(argv, capsys)
    line = _one_line(err)
    assert code == 2 and option in line, line
    said = r"(expected an integer >= 1|must be a positive integer), got '?(0|two|-3)'?( \(see normlab \w+ --help\))?$"
    assert re.search(said, line), line
    assert not (tmp_path / "normlab-runs").exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------- unwritable --out
def _unwritable(tmp_path) -> list[Path]:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    places = [blocker / "out", Path("/proc/normlab-cannot-write-here")]
    if os.geteuid() != 0:  # root writes into a 0o500 directory anyway
        ro = tmp_path / "read-only"
        ro.mkdir(mode=0o500)
        places.append(ro / "out")
    return places


def test_kind_cli_unwritable_out_fails_before_anything_runs(spec, tmp_path, capsys):
    for place in _unwritable(tmp_path):
        for argv in (["claims", "--tiny", "--only", "careless-init", "--out", str(place)],
                     ["run", str(spec), "--out", str(place)]):
            code, out, err = _run(argv, capsys)
            line = _one_line(err)
            assert code == 2 and f"--out {place}: cannot write there" in line, line
            assert "[1/" not in out  # nothing ran
    assert not list(tmp_path.rglob("normlab.sqlite"))


# ------------------------------------------------------------------------------------------ no database
def test_kind_cli_read_verbs_where_no_database_is(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for argv in (["ls"], ["show", "abc"], ["export"], ["plot"], ["export", "--table", "steps"]):
        code, _, err = _run(argv, capsys)
        line = _one_line(err)
        assert code == 2, (argv, line)
        assert "looked for normlab-runs/normlab.sqlite, claims-report/normlab.sqlite" in line and "--db" in line
    missing = tmp_path / "elsewhere"
    for argv in (["ls", "--db", str(missing)], ["show", "abc", "--db", str(missing)], ["ls", str(missing)],
                 ["export", "--db", str(missing / "x.sqlite")], ["plot", "--db", str(missing)]):
        code, _, err = _run(argv, capsys)
        line = _one_line(err)
        assert code == 2 and f"no run database at {missing}" in line and "--db" in line, (argv, line)


def test_read_verbs_take_a_spec_a_directory_or_the_file(spec, tmp_path, monkeypatch, capsys):
    assert _run(["run", str(spec), "--jobs", "1", "--threads", "1"], capsys)[0] == 0
    out_dir = tmp_path / "normlab-runs"
    monkeypatch.chdir(tmp_path / "..")  # another directory than the spec's
    for where in (str(spec), str(out_dir), str(out_dir / "normlab.sqlite")):
        code, out, _ = _run(["ls", "--db", where], capsys)
        assert code == 0 and "2 runs" in out and "norm=bn" in out, where
        code, out, _ = _run(["export", "--db", where], capsys)
        assert code == 0 and len(out.strip().splitlines()) == 3


def test_claims_units_are_stored_and_listed_with_their_claim_id(tmp_path, capsys):
    out_dir = tmp_path / "report"
    code, out, err = _run(["claims", "--tiny", "--only", "careless-init", "--jobs", "1", "--out", str(out_dir)],
                          capsys)
    assert code == 0, err
    code, listing, _ = _run(["ls", "--db", str(out_dir)], capsys)
    rows = [s for s in listing.splitlines() if re.match(r"  [0-9a-f]{10} ", s)]
    assert code == 0 and len(rows) >= 2 and all(" careless-init " in r and " tiny " in r for r in rows), listing
    key = rows[0].split()[0]
    code, shown, _ = _run(["show", key, "--db", str(out_dir)], capsys)
    assert code == 0 and "claim='careless-init' level='tiny'" in shown
    code, csv_text, _ = _run(["export", "--db", str(out_dir), "--claim", "careless-init"], capsys)
    assert code == 0 and csv_text.splitlines()[0].startswith("key,sweep,claim,level,code,")
    # the same command again reuses every unit
    code, out, _ = _run(["claims", "--tiny", "--only", "careless-init", "--jobs", "1", "--out", str(out_dir)], capsys)
    code, again, _ = _run(["ls", "--db", str(out_dir)], capsys)
    assert code == 0 and again == listing


# ------------------------------------------------------------------------------------------------ --dry-run
def test_kind_cli_missing_data_root(tmp_path, capsys):
    root = tmp_path / "no-such-dir"
    p = tmp_path / "mnist.toml"
    p.write_text(f'[base]\ndata = "mnist"\nmodel = "seed_mlp"\nsteps = 3\ndata_args = {{root = "{root}"}}\n')
    for extra in (["--dry-run"], []):
        code, out, err = _run(["run", str(p), *extra], capsys)
        line = _one_line(err)
        assert code == 2 and f"data_args.root '{root}' is not a directory" in line and "--download" in line, line
    assert not (tmp_path / "normlab-runs").exists()
    code, out, _ = _run(["run", str(p), "--dry-run", "--download"], capsys)  # --download would create it
    assert code == 0 and "1 runs" in out


# --------------------------------------------------------------------------------------- --version, --help
def test_kind_cli_version(capsys):
    from normlab import __version__

    code, out, _ = _run(["--version"], capsys)
    assert code == 0 and out.strip() == f"normlab {__version__}"


def test_kind_cli_help_for_users(capsys):
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) >= {"run", "claims", "ls", "show", "plot", "export", "bench", "demo"}
    for name in commands:  # every command: what it does, then one example
        assert re.search(rf"^  {name} +\S.*\n +normlab {name}\b", out, re.M), name
    code, _, err = _run(["frobnicate"], capsys)
    assert code == 2 and "invalid choice: 'frobnicate'" in _one_line(err)


def test_kind_cli_readme_says_which_python(capsys):
    text = (ROOT / "README.md").read_text()
    note = text.find(".venv/bin/python")
    assert note != -1 and "source .venv/bin/activate" in text
    assert note < text.find("examples/"), "the README must say which python before its first example"


# ------------------------------------------------------------------------------------------------ executors
def test_kind_cli_ray_missing_names_the_extra(spec, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    for argv in (["run", str(spec), "--executor", "ray"],
                 ["claims", "--tiny", "--only", "careless-init", "--executor", "ray", "--out", str(tmp_path / "c")]):
        code, _, err = _run(argv, capsys)
        line = _one_line(err)
        assert code == 2 and "pip install 'normlab[cluster]'" in line, line
    assert not list(tmp_path.rglob("normlab.sqlite"))


def test_kind_cli_ctrl_c_during_claims(tmp_path):
    from _procs import alive, count_runs, default_signals, descendants, wait_for

    out_dir = tmp_path / "report"
    cmd = [sys.executable, "-m", "normlab.cli", "claims", "--quick", "--seeds", "1", "--only", "careless-init",
           "--jobs", "2", "--out", str(out_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=os.environ, preexec_fn=default_signals)
    try:
        assert wait_for(lambda: count_runs(out_dir / "normlab.sqlite") >= 1, 300), "no unit was stored"
        family = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    line = _one_line(err)
    m = re.fullmatch(r"interrupted: (\d+) of (\d+) units stored; rerun the same command to resume", line)
    assert m and 1 <= int(m.group(1)) < int(m.group(2)), line
    assert wait_for(lambda: not alive(family), 5.0), alive(family)
    assert count_runs(out_dir / "normlab.sqlite") == int(m.group(1))


def test_kind_cli_ray_cluster_unreachable(spec, tmp_path, monkeypatch, capsys):
    """A Ray that cannot start (no cluster at --address): one line naming the address, exit 2, for run and claims."""
    import types

    def refuse(**kw):
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify the one to connect to.")

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=refuse, remote=lambda **kw: (lambda f: f))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr("normlab.lab.executors._probe_address", lambda address: None)  # "head" accepts: Ray refuses
    for argv in (["run", str(spec), "--executor", "ray", "--address", "head:6379"],
                 ["claims", "--tiny", "--only", "careless-init", "--executor", "ray", "--address", "head:6379",
                  "--out", str(tmp_path / "c")]):
        code, _, err = _run(argv, capsys)
        line = _one_line(err)
        assert code == 2 and ("--address head:6379: expected a running Ray cluster there, but Ray could not connect "
                              "to it: ConnectionError: Could not find") in line, line


# ------------------------------------------------------------------------------------ spec paths that are not specs
def test_kind_cli_spec_path_that_is_not_a_toml_file(tmp_path, capsys):
    """A directory, or a file that is not UTF-8 text, given where a spec belongs: one line, exit 2."""
    binary = tmp_path / "weights.toml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    for where, said in ((tmp_path, "found a directory"), (binary, "not UTF-8")):
        for argv in (["run", str(where)], ["run", str(where), "--dry-run"]):
            code, out, err = _run(argv, capsys)
            line = _one_line(err)
            assert code == 2 and str(where) in line and said in line, (argv, line)
    for argv in (["plot", str(binary)], ["ls", "--db", str(binary)]):
        code, _, err = _run(argv, capsys)
        line = _one_line(err)
        assert code == 2 and "not UTF-8" in line and line.startswith(f"normlab {argv[0]}: "), (argv, line)


# ------------------------------------------------------------------------- read verbs given a file that is no database
def test_kind_cli_read_verbs_given_a_file_that_is_no_database(tmp_path, capsys):
    junk = tmp_path / "results.json"
    junk.write_text("{}")
    for argv in (["ls", "--db", str(junk)], ["show", "abc", "--db", str(junk)], ["export", "--db", str(junk)],
                 ["plot", "--db", str(junk)], ["ls", str(junk)]):
        code, _, err = _run(argv, capsys)
        line = _one_line(err)
        assert code == 2 and line.startswith(f"normlab {argv[0]}: ") and str(junk) in line, (argv, line)
        assert "expected a normlab SQLite run database" in line, line
    assert junk.read_text() == "{}"  # untouched


# ----------------------------------------------------------------------------- unwritable -o of export and plot
def test_kind_cli_unwritable_output_file_of_export_and_plot(spec, tmp_path, capsys):
    assert _run(["run", str(spec), "--jobs", "1", "--threads", "1"], capsys)[0] == 0
    db = tmp_path / "normlab-runs"
    for place in _unwritable(tmp_path):
        for argv, _name in ((["export", "--db", str(db), "-o", str(place / "runs.csv")], "runs.csv"),
                           (["plot", "--db", str(db), "-o", str(place / "curves.png")], "curves.png")):
            code, out, err = _run(argv, capsys)
            line = _one_line(err)
            assert code == 2 and line.startswith(f"normlab {argv[0]}: error: ") and str(place) in line, (argv, line)
            assert "cannot write" in line, line


# ------------------------------------------------------------------------------------------ bench's numbers
@pytest.mark.parametrize("argv,said", [
    (["bench", "--reps", "0"], "argument --reps: expected an integer >= 1, got '0'"),
    (["bench", "--models", "--reps", "-2"], "argument --reps: expected an integer >= 1, got '-2'"),
    (["bench", "--shapes", "32x64x56x56,nope"], "--shapes: unknown shape 'nope'"),
    (["bench", "--shapes", ","], "--shapes: unknown shape ','"),
])
def test_kind_cli_bench_bad_reps_or_shapes_fail_before_timing(argv, said, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(argv, capsys)
    line = _one_line(err)
    assert code == 2 and said in line and "timing" not in err, line
    assert out == "" and not list(tmp_path.iterdir())  # nothing timed, no JSON written


def test_claims_help_states_the_default_seed_counts(capsys):
    from normlab.lab.claims.base import DEFAULT_SEEDS

    with pytest.raises(SystemExit):
        build_parser().parse_args(["claims", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default " + ", ".join(f"{n} {level}" for level, n in DEFAULT_SEEDS.items()) in text, text


def test_kind_cli_read_verbs_leave_another_programs_database_alone(tmp_path, capsys):
    """ls/show/export/plot --db on an SQLite file that is not normlab's (or an empty file) used to create normlab's
    tables in it and switch it to WAL; now one line, exit 2, the file byte for byte as it was."""
    import sqlite3

    other = tmp_path / "app.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE users (id INTEGER)")
    con.execute("INSERT INTO users VALUES (1)")
    con.commit()
    con.close()
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    for db in (other, empty):
        before = db.read_bytes()
        for argv in (["ls", "--db", str(db)], ["show", "abc", "--db", str(db)], ["export", "--db", str(db)],
                     ["plot", "--db", str(db)]):
            code, _, err = _run(argv, capsys)
            line = _one_line(err)
            assert code == 2 and "expected a normlab SQLite run database" in line and str(db) in line, (argv, line)
        assert db.read_bytes() == before, db
        assert sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite", "empty.sqlite"]  # no -wal/-shm left
