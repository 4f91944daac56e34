"""The ``normlab`` command: parses arguments, calls the parts of the package, prints.

A user's mistake gets one line on stderr saying what was expected and what arrived, and exit code 2 (no
traceback); Ctrl-C exits 130 with one line.
"""

from __future__ import annotations

import argparse
import sys

USAGE_TEXT = """\
normlab: Batch Normalization and its family for PyTorch, and a lab that tests the literature's claims.

commands (each has its own --help):
  claims   test the claims of the BN literature, write an HTML/Markdown/JSON report; every unit is a stored run
             normlab claims --quick --out claims-report
  run      run (or resume) the grid of an experiment spec (TOML) into DIR/normlab.sqlite
             normlab run experiments/seed.toml --jobs 2
  ls       list the stored runs of a spec's output, a claims report or a database (with claim ids)
             normlab ls --db claims-report
  show     one stored run: its config, final metrics and evaluations
             normlab show 3f2a9c --db claims-report
  plot     curves (mean and a +-1 std band over seeds) of stored runs, as PNG or SVG
             normlab plot experiments/seed.toml --metric val_loss
  export   stored runs, per-step metrics or evaluations as CSV or JSON
             normlab export --db normlab-runs --table steps -o steps.csv
  bench    time normlab's BatchNorm kernels against torch
             normlab bench --quick
  demo     a BatchNorm smoke test against torch and the seed comparison on MNIST
             normlab demo

Run and claims take --executor local|ray (--jobs worker processes here, or Ray tasks on --address); kill or Ctrl-C
them at any moment and rerun the same command to resume.
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``normlab run: error: argument --jobs: ...`` and exit 2."""

    def error(self, message: str):  # argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _fail(command: str, message: str) -> int:
    print(f"normlab {command}: error: {message}", file=sys.stderr)
    return 2


def _writable(path, option: str = "--out") -> str | None:
    """None if ``path`` is (or can be made) a directory this process can write into, else why not (one line)."""
    import tempfile
    from pathlib import Path

    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".normlab-write-check-"):
            pass
    except OSError as e:
        return f"{option} {path}: cannot write there ({e.strerror or e}); give a writable directory"
    return None


def _demo(args: argparse.Namespace) -> int:
    """A BatchNorm smoke run: train-mode steps against torch, then eval, printed side by side."""
    import torch

    from .nn import BatchNorm2d

    torch.manual_seed(0)
    ours, theirs = BatchNorm2d(8), torch.nn.BatchNorm2d(8)
    print("normlab demo: BatchNorm2d(8) vs torch.nn.BatchNorm2d(8), 5 training steps on (16, 8, 6, 6) inputs")
    for step in range(5):
        x = torch.randn(16, 8, 6, 6) * 3 + 2
        diff = (ours(x) - theirs(x)).abs().max().item()
        print(f"  step {step}: max |y_normlab - y_torch| = {diff:.2e}")
    ours.eval(), theirs.eval()
    x = torch.randn(4, 8, 6, 6)
    print(f"  eval:   max |y_normlab - y_torch| = {(ours(x) - theirs(x)).abs().max().item():.2e}")
    var_diff = (ours.running_var - theirs.get_buffer("running_var")).abs().max().item()  # torch types it Optional
    print(f"  running_var max difference = {var_diff:.2e}")
    _lab_demo()
    return 0


def _bench(args: argparse.Namespace) -> int:
    """The BatchNorm kernel grid: medians and ratios printed, everything written to JSON."""
    if args.models:
        from .bench.models import main as bench_models_main

        json_path = "bench_models.json" if args.json == "bench_kernels.json" else args.json
        return bench_models_main(["--reps", str(args.reps), "--json", json_path])
    from .bench import kernels as bench_kernels

    names = [s.strip() for s in args.shapes.split(",") if s.strip()] if args.shapes else \
        (bench_kernels.QUICK if args.quick else None)
    known = [n for n, *_ in bench_kernels.GRID]
    unknown = [n for n in names or () if n not in known]
    if unknown or (args.shapes and not names):  # before the environment line and any timing
        return _fail("bench", f"--shapes: unknown shape {(unknown or [args.shapes])[0]!r}; expected some of {known}")
    env = bench_kernels.environment()
    print(f"normlab bench: torch {env['torch']}, numba {env['numba']}, {env['cpus']} CPUs, "
          f"threads torch={env['torch_threads']} numba={env['numba_threads']}, load {env['loadavg_at_start']}")
    cases = bench_kernels.run_grid(names, reps=args.reps, compile_=args.compile,
                                   progress=lambda s: print(f"  timing {s}", file=sys.stderr, flush=True))
    print(bench_kernels.format_table(cases))
    steps = None
    if not args.no_train_step:
        print("  timing lab cnn training steps", file=sys.stderr, flush=True)
        steps = bench_kernels.train_step_cases(reps=max(3, args.reps // 2))
        print(bench_kernels.format_train_steps(steps))
    bench_kernels.write_json(cases, args.json, env, steps)
    print(f"wrote {args.json}")
    return 0


def _claims(args: argparse.Namespace) -> int:
    """``normlab claims``: run the literature's claims about BN and write the report."""
    from .lab.claims import all_claims, get_claim
    from .lab.executors import ExecutorUnavailable, MissingExtra, make_executor
    from .lab.report import run_claims, verdict_table_markdown

    if args.list:
        for c in all_claims():
            print(f"{c.id:24s} {c.title}")
        return 0
    ids = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    command = "normlab claims " + " ".join(sys.argv[2:]) if args.command_line is None else args.command_line
    try:
        for i in ids or ():
            get_claim(i)  # unknown ids fail before anything runs
    except ValueError as exc:
        return _fail("claims", str(exc).removeprefix("normlab claims: "))
    if args.seeds is not None and args.seeds < 1:
        return _fail("claims", f"--seeds must be a positive integer, got {args.seeds}")
    why = _writable(args.out)
    if why:
        return _fail("claims", why)
    try:
        make_executor(args.executor, jobs=args.jobs, address=args.address)  # Ray installed? before anything runs
        results, paths = run_claims(ids, level=args.level, seeds=args.seeds, first_seed=args.first_seed,
                                    out_dir=args.out, jobs=args.jobs,
                                    executor=args.executor, address=args.address, command=command.strip(),
                                    log=(lambda s: None) if args.quiet else print,
                                    progress="none" if args.quiet else "auto")
    except (ValueError, MissingExtra, ExecutorUnavailable) as exc:
        return _fail("claims", str(exc).removeprefix("normlab claims: "))
    if args.print_table:
        print(verdict_table_markdown(results, link=False))
    print(f"report: {paths['html']} (also {paths['md'].name}, {paths['json'].name})")
    return 0


def _add_executor_args(p, jobs_default, jobs_help: str) -> None:
    from .lab.executors import EXECUTORS

    p.add_argument("--executor", default="local", choices=EXECUTORS,
                   help="local: --jobs worker processes on this machine (default); ray: one Ray task per unit "
                        "(needs normlab[cluster])")
    p.add_argument("--address", help="Ray cluster to use with --executor ray (e.g. auto, ray://head:10001); "
                                     "default: start a local Ray instance with --jobs CPUs")
    p.add_argument("--jobs", type=_positive_int, default=jobs_default, help=jobs_help)


def _add_claims_parser(sub) -> None:
    import os

    p = sub.add_parser("claims", help="test the literature's claims about BN; write an HTML/Markdown/JSON report",
                       description="Run the claims (every unit a lab run stored in OUT/normlab.sqlite, finished "
                                   "units reused) and write OUT/index.html, report.md and results.json.")
    level = p.add_mutually_exclusive_group()
    level.add_argument("--quick", dest="level", action="store_const", const="quick", help="the demo (default)")
    level.add_argument("--full", dest="level", action="store_const", const="full", help="more seeds, longer runs")
    level.add_argument("--tiny", dest="level", action="store_const", const="tiny", help="seconds; for tests")
    p.set_defaults(level="quick", func=_claims, command_line=None)
    p.add_argument("--only", metavar="ID,...", help="comma-separated claim ids (see --list)")
    from .lab.claims.base import DEFAULT_SEEDS

    p.add_argument("--seeds", type=int, help="number of seeds (default "
                   + ", ".join(f"{n} {level}" for level, n in DEFAULT_SEEDS.items()) + ")")
    p.add_argument("--first-seed", type=int, default=None,
                   help="first verdict seed for every claim (default: each claim's preregistered fresh block, or 0 "
                        "where none is registered; see python -m normlab.lab.protocol)")
    p.add_argument("--out", default="claims-report", help="output directory (default: claims-report)")
    _add_executor_args(p, min(2, os.cpu_count() or 1), "worker processes, or Ray CPUs (default: 2 at most)")
    p.add_argument("--list", action="store_true", help="list the claims and exit")
    p.add_argument("--print-table", action="store_true", help="print the verdict table as Markdown at the end")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


# ------------------------------------------------------------------------------------------- the lab's commands
def _lab_demo() -> None:
    """The seed comparison: seed_mlp with and without BN on the embedded MNIST subset, printed Keras-style."""
    import time

    from .lab.train import Callback, TrainConfig, train

    class KerasLines(Callback):
        def __init__(self, epochs: int, per_epoch: int) -> None:
            self.epochs, self.per_epoch, self.t = epochs, per_epoch, 0.0

        def on_train_start(self, state) -> None:
            self.t = time.perf_counter()

        def on_eval(self, state, m) -> None:
            if m["step"] == 0:
                return
            now = time.perf_counter()
            print(f"  Epoch {m['epoch']:>2}/{self.epochs} - {self.per_epoch}/{self.per_epoch} - {now - self.t:.1f}s - "
                  f"loss: {m['train_loss']:.4f} - accuracy: {m['train_acc']:.4f} - "
                  f"val_loss: {m['val_loss']:.4f} - val_accuracy: {m['val_acc']:.4f}")
            self.t = now

    epochs = 10
    print(f"\nnormlab demo: seed_mlp (Flatten -> Dense(128, ReLU) -> [BN] -> Dense(10)), mnist5k (4000 train / 1000 "
          f"val, stratified), Adam lr 1e-3, batch 32, {epochs} epochs")
    results = {}
    for norm in ("bn", "none"):
        print(f"model with norm={norm!r}:")
        cfg = TrainConfig(data="mnist5k", model="seed_mlp", norm=norm, epochs=epochs, batch_size=32, seed=0)
        results[norm] = train(cfg, callbacks=[KerasLines(epochs, 125)], progress="none", threads=1)
    print(f"\n  {'model':<12}{'val_loss':>10}{'val_acc':>10}{'best val_acc':>14}{'time':>8}")
    for norm, r in results.items():
        best = max(e["val_acc"] for e in r.evals)
        name = "with BN" if norm == "bn" else "without BN"
        print(f"  {name:<12}{r.final['val_loss']:>10.4f}{r.final['val_acc']:>10.4f}{best:>14.4f}{r.wall_time:>7.1f}s")


def _open_db(args: argparse.Namespace, command: str):
    """The store a read command means (``--db`` or the positional argument; see :func:`normlab.lab.sweep.find_db`)."""
    from .lab.store import DatabaseNotFound, open_store
    from .lab.sweep import SpecError, find_db

    where = getattr(args, "db_opt", None) or getattr(args, "db", None)
    try:
        return open_store(find_db(where, command=f"normlab {command}"))
    except DatabaseNotFound:
        raise
    except (SpecError, ValueError) as e:  # a bad spec file, or a file that is no run database: one line, exit 2
        raise DatabaseNotFound(f"normlab {command}: error: {e}") from None


def _cmd_run(args: argparse.Namespace) -> int:
    from .lab.executors import ExecutorUnavailable, MissingExtra, make_executor
    from .lab.sweep import SpecError, check_data, load_spec, run_grid

    try:
        spec = load_spec(args.spec, out=args.out)
        check_data(spec, download=args.download)
        make_executor(args.executor, jobs=args.jobs or 1, address=args.address)  # Ray installed? before any run
    except (SpecError, ValueError, MissingExtra, ExecutorUnavailable) as e:
        return _fail("run", str(e))
    if args.dry_run:
        print(f"{spec.name}: {len(spec.runs)} runs -> {spec.db_path}")
        for (_config, params), key in zip(spec.runs, spec.keys):
            print(f"  {key[:10]} " + " ".join(f"{k}={v}" for k, v in params.items()))
        return 0
    why = _writable(spec.out, "--out" if args.out else "the spec's output directory")
    if why:
        return _fail("run", why)
    if args.download:
        from .lab.sweep import prefetch

        try:
            prefetch(spec)
        except (SpecError, OSError) as e:
            return _fail("run", str(e))
    try:
        summary = run_grid(spec, jobs=args.jobs, threads=args.threads, executor=args.executor, address=args.address)
    except (ValueError, MissingExtra, ExecutorUnavailable) as e:
        return _fail("run", str(e))
    for key, err in summary.failed:
        print(f"normlab run: run {key} failed: {err}", file=sys.stderr)
    return 1 if summary.failed else 0


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4f}"
    return str(v)


def _describe(r) -> str:
    """A run's grid values, or (a claim's unit) what tells it from its neighbours."""
    if r.params:
        return " ".join(f"{k}={v}" for k, v in r.params.items())
    c = r.config
    args = " ".join(f"{k}={v}" for k, v in sorted(c.get("model_args", {}).items()))
    return f"model={c.get('model')} norm={c.get('norm')} seed={c.get('seed')}" + (f" {args}" if args else "")


def _cmd_ls(args: argparse.Namespace) -> int:
    with _open_db(args, "ls") as store:
        runs = store.runs(sweep=args.sweep, claim=args.claim)
        print(f"{store.path}: {len(runs)} runs")
        if runs:
            print(f"  {'key':<12}{'sweep':<14}{'claim':<24}{'level':<7}{'val_acc':>9} {'val_loss':>10}{'steps':>7}"
                  f"{'time':>8}  params")
        for r in runs:
            status = f"  DIVERGED at {r.diverged_step}" if r.diverged else ""
            print(f"  {r.key[:10]:<12}{r.sweep[:13]:<14}{r.claim[:23]:<24}{r.level[:6]:<7}"
                  f"{_fmt(r.final.get('val_acc', float('nan'))):>9} {_fmt(r.final.get('val_loss', float('nan'))):>10}"
                  f"{r.final.get('steps', 0):>7}{r.wall_time:>7.1f}s  {_describe(r)}{status}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    import json

    store = _open_db(args, "show")
    try:
        r = store.get(args.run)
    except KeyError as e:
        return _fail("show", e.args[0])
    where = f"claim={r.claim!r} level={r.level!r}" if r.claim else f"sweep={r.sweep!r}"
    print(f"run {r.key}  {where}  {f'DIVERGED at step {r.diverged_step}' if r.diverged else 'finished'}"
          f"  wall {r.wall_time:.1f}s  normlab {r.version}  code {r.code or '?'}")
    print("params: " + json.dumps(r.params))
    print("config: " + json.dumps(r.config, sort_keys=True))
    print("final:  " + ", ".join(f"{k}={_fmt(v)}" for k, v in r.final.items()))
    if r.probes:
        print("probes: " + json.dumps(r.probes, sort_keys=True)[:2000])
    evals = store.evals(r.key)
    print(f"  {'step':>7}{'epoch':>6}{'train_loss':>12}{'train_acc':>11}{'val_loss':>10}{'val_acc':>9}{'time':>8}")
    for row in evals:
        print(f"  {row['step']:>7}{row['epoch']:>6}{_fmt(row['train_loss']):>12}{_fmt(row['train_acc']):>11}"
              f"{_fmt(row['val_loss']):>10}{_fmt(row['val_acc']):>9}{row['time']:>7.1f}s")
    steps = store.steps(r.key)
    if steps:
        print(f"  {len(steps)} step rows (normlab export --table steps for all); last: "
              + ", ".join(f"{k}={_fmt(v)}" for k, v in steps[-1].items()))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .lab.plots import plot_runs
    from .lab.store import open_store
    from .lab.sweep import SpecError, find_db, load_spec

    source = args.db_opt or args.source
    try:
        if source and source.endswith(".toml"):
            spec = load_spec(source, out=args.out)
            store, name = open_store(find_db(spec.db_path, command="normlab plot")), spec.name
            records = store.runs(keys=spec.keys)
            default_dir = spec.out
        else:
            store, name = open_store(find_db(source, command="normlab plot")), "runs"
            records = store.runs(sweep=args.sweep, claim=args.claim)
            default_dir = store.path.parent
        out = Path(args.output) if args.output else default_dir / f"{name}-{args.metric}.{args.format}"
        path = plot_runs(store, records, metric=args.metric, out=out, x=args.x, logy=args.logy)
    except (SpecError, ValueError) as e:
        return _fail("plot", str(e).removeprefix("normlab plot: ").removeprefix("error: "))
    except OSError as e:  # the image cannot be written there
        where = e.filename or args.output or "the output directory"
        return _fail("plot", f"cannot write {where} ({e.strerror or e}); give a writable -o file")
    print(f"wrote {path} ({len(records)} runs)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import json
    import math

    store = _open_db(args, "export")
    runs = store.runs(sweep=args.sweep, claim=args.claim)

    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    if args.table == "runs":
        rows = []
        for r in runs:
            row = {"key": r.key, "sweep": r.sweep, "claim": r.claim, "level": r.level, "code": r.code,
                   "diverged": r.diverged, "diverged_step": r.diverged_step, "wall_time": r.wall_time}
            row.update({f"config.{k}": (json.dumps(v) if isinstance(v, (dict, list)) else v)
                        for k, v in r.config.items()})
            row.update({f"final.{k}": clean(v) for k, v in r.final.items()})
            if r.probes:
                row["probes"] = json.dumps(r.probes, sort_keys=True)
            rows.append(row)
    else:
        fetch = store.steps if args.table == "steps" else store.evals
        rows = [{"key": r.key, **{k: clean(v) for k, v in m.items()}} for r in runs for m in fetch(r.key)]
    try:
        out = open(args.output, "w", newline="") if args.output else sys.stdout
    except OSError as e:
        return _fail("export", f"-o {args.output}: cannot write there ({e.strerror or e}); give a writable file")
    try:
        _write_rows(out, rows, args.format)
    except BrokenPipeError:  # `normlab export | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if out is not sys.stdout:
            out.close()
    if args.output:
        print(f"wrote {len(rows)} {args.table} rows to {args.output}")
    return 0


def _write_rows(out, rows: list[dict], fmt: str) -> None:
    import csv
    import json

    if fmt == "json":
        json.dump(rows, out, indent=1)
        out.write("\n")
    else:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    out.flush()


def _add_lab_commands(sub) -> None:
    from .lab.plots import METRICS

    p = sub.add_parser("run", help="run (or resume) the grid of an experiment spec (TOML)",
                       description="Run every run of a spec's grid not yet stored in OUT/normlab.sqlite.")
    p.add_argument("spec", help="experiment spec, a TOML file")
    p.add_argument("--out", help="output directory (default: the spec's `out`, else normlab-runs next to the spec)")
    _add_executor_args(p, None, "worker processes, or Ray CPUs (default: the number of cores)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads per run (default: cores // jobs)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the runs without running them")
    p.add_argument("--download", action="store_true",
                   help="first download MNIST / Fashion-MNIST / CIFAR-10 into the runs' data_args.root if missing")
    p.set_defaults(func=_cmd_run)

    db_help = ("a spec file, an output directory holding normlab.sqlite, or the file (default: ./normlab-runs, "
               "then ./claims-report)")
    p = sub.add_parser("ls", help="list stored runs (claims' units with their claim id)")
    p.add_argument("db", nargs="?", default=None, help=db_help)
    p.add_argument("--db", dest="db_opt", metavar="DB", help=db_help)
    p.add_argument("--sweep", help="only runs of this sweep name")
    p.add_argument("--claim", help="only units of this claim id")
    p.set_defaults(func=_cmd_ls)

    p = sub.add_parser("show", help="show one run: config, final metrics, evaluations")
    p.add_argument("run", help="run key (a unique prefix is enough)")
    p.add_argument("--db", dest="db_opt", metavar="DB", help=db_help)
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("plot", help="plot curves (mean and a +-1 std band over seeds) of a spec's or a database's runs")
    p.add_argument("source", nargs="?", default=None, help="experiment spec (.toml) or run database / output directory")
    p.add_argument("--db", dest="db_opt", metavar="DB", help=db_help)
    p.add_argument("--out", help="output directory of the spec's runs (as given to `normlab run --out`)")
    p.add_argument("--metric", default="val_acc", choices=METRICS)
    p.add_argument("--x", default="step", choices=("step", "epoch", "time"))
    p.add_argument("--format", default="png", choices=("png", "svg"))
    p.add_argument("--logy", action="store_true", help="logarithmic y axis")
    p.add_argument("--sweep", help="only runs of this sweep name (database source)")
    p.add_argument("--claim", help="only units of this claim id (database source)")
    p.add_argument("-o", "--output", help="image file (.png/.svg); default <out>/<name>-<metric>.<format>")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("export", help="export runs, per-step metrics or evaluations as CSV or JSON")
    p.add_argument("db", nargs="?", default=None, help=db_help)
    p.add_argument("--db", dest="db_opt", metavar="DB", help=db_help)
    p.add_argument("--table", default="runs", choices=("runs", "steps", "evals"))
    p.add_argument("--format", default="csv", choices=("csv", "json"))
    p.add_argument("--sweep", help="only runs of this sweep name")
    p.add_argument("--claim", help="only units of this claim id")
    p.add_argument("-o", "--output", help="file to write (default: standard output)")
    p.set_defaults(func=_cmd_export)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="normlab", usage="normlab COMMAND [options]  (normlab COMMAND --help for its options)",
                     description=USAGE_TEXT, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"normlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser,
                                prog="normlab",
                                help=argparse.SUPPRESS)  # the description lists the commands with examples
    p = sub.add_parser("demo", help="a BatchNorm smoke test against torch, then the seed comparison on MNIST")
    p.set_defaults(func=_demo)
    p = sub.add_parser("bench", help="time normlab's BatchNorm kernels against torch (table + JSON)")
    p.add_argument("--reps", type=_positive_int, default=15, help="timed rounds per case (median reported)")
    p.add_argument("--quick", action="store_true", help="a 5-shape subset of the grid")
    p.add_argument("--shapes", default="", help="comma-separated grid names, e.g. '32x64x56x56,256x128 f64' "
                                                  "(' CL': channels-last, ' f64': float64)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    p.add_argument("--json", default="bench_kernels.json", help="where to write the results")
    p.add_argument("--no-train-step", action="store_true", help="skip the lab cnn end-to-end training step")
    p.add_argument("--models", action="store_true",
                   help="time a whole training step of the lab CNN, ResNet-20 and a BN1d MLP with torch's BN, "
                        "normlab's and normlab's fused (bench_models.json)")
    p.set_defaults(func=_bench)
    _add_lab_commands(sub)
    _add_claims_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``normlab`` command; returns its exit code (2: a user's mistake, 130: Ctrl-C)."""
    from .lab.executors import Interrupted
    from .lab.store import DatabaseNotFound
    from .lab.sweep import SpecError

    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help, --version, or a one-line usage error (already printed)
            return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
        return int(args.func(args) or 0)
    except DatabaseNotFound as e:
        print(f"{e}", file=sys.stderr)
        return 2
    except SpecError as e:  # a spec file given to --db of a read command
        print(f"normlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        line = e.line() if isinstance(e, Interrupted) else "interrupted; rerun the same command to resume"
        print(line, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
