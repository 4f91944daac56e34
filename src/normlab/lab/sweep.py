"""Experiment specs (TOML) expanded into grids of runs, run in parallel processes, stored, resumable.

A spec::

    name = "seed-comparison"        # optional (default: the file's stem); stored with each run
    out = "runs"                    # optional output directory (relative to the spec file); --out overrides
    description = "..."             # optional

    [base]                          # TrainConfig fields shared by every run
    data = "mnist5k"
    model = "seed_mlp"
    epochs = 10
    [base.model_args]               # builder options (see normlab.lab.models.model_options)
    [base.data_args]                # load_dataset keywords

    [grid]                          # every key a list of values; the runs are the cartesian product
    norm = ["bn", "none"]
    seed = [0, 1, 2]
    model_args.init_scale = [0.5, 1.0]     # dotted keys reach into model_args / data_args

:func:`load_spec` validates everything before any run starts (unknown keys, bad values, model options, norm
specs, by building each distinct model once) and names the offending key and what is allowed. :func:`run_grid`
skips runs whose key is already in the store, runs the others through :mod:`normlab.lab.executors` (local
processes or Ray; the driver stores each run in one transaction when it finishes), and returns a
:class:`SweepSummary`. Killed at any moment, the same call
resumes where it stopped.
"""

from __future__ import annotations

import copy
import itertools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .data import DATASETS
from .models import MODELS, build_model, model_options
from .store import DB_NAME, DEFAULT_PLACES, DatabaseNotFound, Store
from .train import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomllib is tomli, before it joined the standard library (a dependency there)
    import tomli as tomllib

__all__ = ["find_db", "Spec", "SpecError", "SweepSummary", "load_spec", "parse_spec", "run_grid", "default_jobs",
           "prefetch", "check_data"]

_TOP_KEYS = ("name", "out", "description", "base", "grid")
_CONFIG_KEYS = tuple(f.name for f in fields(TrainConfig))
# Input shapes used only to check that every model of a grid can be built before anything runs.
_PROBE_SHAPES = {"mnist5k": (1, 28, 28), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "digits": (1, 8, 8),
                 "cifar10": (3, 32, 32)}


class SpecError(ValueError):
    """A spec is malformed; the message names the file, the key, what is allowed and what was given."""


@dataclass
class Spec:
    """An expanded spec: ``runs`` is a list of (TrainConfig, params) with params the run's grid values."""

    name: str
    path: Path | None
    out: Path
    base: dict
    grid: dict[str, list]
    runs: list[tuple[TrainConfig, dict]]
    description: str = ""

    @property
    def keys(self) -> list[str]:
        """The runs' store keys (:func:`~normlab.lab.store.run_key`: config and code digest)."""
        from .store import code_version, run_key

        code = code_version()
        return [run_key(c, code) for c, _ in self.runs]

    @property
    def db_path(self) -> Path:
        return self.out / DB_NAME


@dataclass
class SweepSummary:
    name: str
    db_path: Path
    total: int
    skipped: int
    ran: int = 0
    diverged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, error message)
    keys: list[str] = field(default_factory=list)


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _set(config: dict, dotted: str, value: Any) -> None:
    head, _, tail = dotted.partition(".")
    if tail:
        config.setdefault(head, {})[tail] = value
    else:
        config[head] = value


def parse_spec(doc: dict, *, where: str = "spec", out: str | os.PathLike | None = None,
               base_dir: Path | None = None) -> Spec:
    """Validate and expand a spec given as a dict (the parsed TOML). ``where`` names it in error messages."""

    def fail(msg: str) -> None:
        raise SpecError(f"{where}: {msg}")

    unknown = sorted(set(doc) - set(_TOP_KEYS))
    if unknown:
        fail(f"unknown top-level key(s) {unknown}; allowed: {list(_TOP_KEYS)}")
    base = doc.get("base", {})
    grid_doc = doc.get("grid", {})
    if not isinstance(base, dict):
        fail(f"base must be a table of TrainConfig fields, got {type(base).__name__}")
    if not isinstance(grid_doc, dict):
        fail(f"grid must be a table of lists, got {type(grid_doc).__name__}")
    for k in base:
        if k not in _CONFIG_KEYS:
            fail(f"base.{k} is not a TrainConfig field; allowed: {list(_CONFIG_KEYS)}")
    grid: dict[str, list] = {}
    for k, v in _flatten(grid_doc).items():
        head, _, tail = k.partition(".")
        if head not in _CONFIG_KEYS or (tail and head not in ("model_args", "data_args")):
            fail(f"grid.{k} is not a TrainConfig field (or model_args.X / data_args.X); allowed: {list(_CONFIG_KEYS)}")
        if head in ("model_args", "data_args") and not tail:
            fail(f"grid.{k}: give the option as a dotted key, e.g. grid.{head}.depth = [2, 4]")
        if not isinstance(v, list) or not v:
            fail(f"grid.{k} must be a non-empty list of values, got {v!r}")
        grid[k] = v
    name = doc.get("name", "sweep")
    if not isinstance(name, str) or not name:
        fail(f"name must be a non-empty string, got {name!r}")

    runs: list[tuple[TrainConfig, dict]] = []
    seen: set[str] = set()
    probed: set[str] = set()
    combos = itertools.product(*grid.values()) if grid else [()]
    for combo in combos:
        params = dict(zip(grid, combo))
        cfg = copy.deepcopy(base)
        for k, v in params.items():
            _set(cfg, k, v)
        shown = " ".join(f"{k}={v!r}" for k, v in params.items())
        try:
            config = TrainConfig(**cfg)
        except (TypeError, ValueError) as e:
            fail(f"run [{shown}]: {e}")
        if config.model not in MODELS:
            key = "grid.model" if "model" in params else "base.model"
            fail(f"{key}={config.model!r} is not a model; allowed: {sorted(MODELS)}")
        if config.data not in DATASETS:
            key = "grid.data" if "data" in params else "base.data"
            fail(f"{key}={config.data!r} is not a data set; allowed: {sorted(DATASETS)}")
        allowed = model_options(config.model)
        bad = sorted(set(config.model_args) - set(allowed))
        if bad:
            fail(f"model_args {bad} are not options of model {config.model!r}; allowed: "
                 f"{sorted(k for k in allowed if k != 'norm')}")
        probe = repr((config.model, config.norm, sorted(config.model_args.items()), config.data,
                      sorted(config.data_args.items())))
        if probe not in probed:
            probed.add(probe)
            shape = _PROBE_SHAPES.get(config.data, (int(config.data_args.get("dim", 20)),))
            try:
                build_model(config.model, shape, 10, norm=config.norm, **config.model_args)
            except (TypeError, ValueError) as e:
                which = "norm" if "norm" in str(e).lower() and "norm" in params else "model"
                fail(f"run [{shown}]: cannot build the {which}: {e}")
        key = config.key()
        if key in seen:
            continue  # two grid points giving one config (e.g. an option the model ignores) are one run
        seen.add(key)
        runs.append((config, params))

    base_dir = base_dir or Path.cwd()
    out_dir = Path(out) if out is not None else base_dir / doc.get("out", "normlab-runs")
    return Spec(name, None, out_dir, base, grid, runs, doc.get("description", ""))


def load_spec(path: str | os.PathLike, *, out: str | os.PathLike | None = None) -> Spec:
    """Read, validate and expand a TOML spec file (errors name the file and the key)."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: spec file is missing")
    if path.is_dir():
        raise SpecError(f"{path}: expected a spec file (TOML), found a directory")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: expected TOML, found a syntax error ({e})") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: expected TOML (UTF-8 text), found bytes that are not UTF-8 ({e.reason} at byte "
                        f"{e.start})") from None
    except OSError as e:  # unreadable: permissions, a FIFO gone, ...
        raise SpecError(f"{path}: cannot read the spec file ({e.strerror or e})") from None
    doc.setdefault("name", path.stem)
    spec = parse_spec(doc, where=str(path), out=out, base_dir=path.parent)
    spec.path = path
    return spec


def prefetch(spec: Spec, echo: Callable[[str], None] | None = print) -> list[tuple[str, Path]]:
    """Download the file data sets (MNIST, Fashion-MNIST, CIFAR-10) that ``spec``'s runs read, unless present.

    Runs read ``data_args["root"]``; fetching first keeps ``download`` out of the configs (and the run keys).
    """
    from .data import FILE_SETS, fetch

    wanted = []
    for config, _ in spec.runs:
        if config.data in FILE_SETS:
            if "root" not in config.data_args:
                raise SpecError(f"{spec.path or spec.name}: data {config.data!r} needs data_args.root (a directory)")
            item = (config.data, Path(config.data_args["root"]).expanduser())
            if item not in wanted:
                wanted.append(item)
    for name, root in wanted:
        if echo:
            echo(f"fetching {name} into {root} (files already there are kept)")
        fetch(name, root)
    return wanted


def check_data(spec: Spec, *, download: bool = False) -> None:
    """Check, before anything runs, that the file data sets (MNIST, Fashion-MNIST, CIFAR-10) the runs read have a
    ``data_args.root`` that exists (or, with ``download``, is given: it will be created). Raises SpecError naming
    the spec, the data set and the directory."""
    from .data import FILE_SETS

    where = spec.path or spec.name
    seen: set[tuple[str, str]] = set()
    for config, _ in spec.runs:
        if config.data not in FILE_SETS:
            continue
        root = config.data_args.get("root")
        if root is None:
            raise SpecError(f"{where}: data {config.data!r} needs data_args.root (a directory holding its files)")
        if (config.data, str(root)) in seen:
            continue
        seen.add((config.data, str(root)))
        path = Path(root).expanduser()
        if not download and not path.is_dir():
            raise SpecError(f"{where}: data {config.data!r}: data_args.root {str(path)!r} is not a directory; give "
                            f"the directory holding the files, or add --download to fetch them there")


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _fmt_params(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def run_grid(
    spec: Spec | str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    jobs: int | None = None,
    echo: Callable[[str], None] | None = print,
    threads: int | None = None,
    executor: str = "local",
    address: str | None = None,
    progress: str = "auto",
) -> SweepSummary:
    """Run every not-yet-stored run of ``spec`` (a :class:`Spec` or a TOML path) and return a summary.

    The runs go through :func:`normlab.lab.executors.execute` (this process alone writes the store, one
    transaction per run). ``executor``: "local" (``jobs`` processes; default the number of cores, at most the
    number of pending runs; with 1 the runs go in this process) or "ray" (one task per run on the cluster at
    ``address``, or on a local Ray instance with ``jobs`` CPUs). ``threads``: torch threads per run (default:
    cores // jobs; small models on a busy machine are fastest with 1). ``echo`` prints one line per finished run
    (None: silent); ``progress``: "auto" (a bar with an ETA on a terminal, else periodic lines), "bar", "lines"
    or "none". Runs that raise are reported in ``summary.failed`` and not stored, so a rerun retries them. Ctrl-C
    raises :class:`~normlab.lab.executors.Interrupted` after stopping the workers.
    """
    from .executors import Progress, Tally, UnitsFailed, execute

    if not isinstance(spec, Spec):
        spec = load_spec(spec, out=out)
    elif out is not None:
        spec.out = Path(out)
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise ValueError(f"run_grid: jobs must be an int >= 1, got {jobs!r}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"run_grid: threads must be an int >= 1, got {threads!r}")
    spec.out.mkdir(parents=True, exist_ok=True)
    db_path = spec.db_path
    keys = spec.keys
    with Store(db_path) as store:
        done = store.keys()
        n_pending = sum(k not in done for k in keys)
        summary = SweepSummary(spec.name, db_path, len(spec.runs), len(spec.runs) - n_pending, keys=keys)
        say = echo or (lambda s: None)
        say(f"{spec.name}: {len(spec.runs)} runs, {summary.skipped} already stored, {n_pending} to run -> {db_path}")
        if not n_pending:
            return summary
        jobs = min(jobs or default_jobs(), n_pending)
        threads = threads or max(1, default_jobs() // jobs)
        width = len(str(n_pending))
        t0 = time.perf_counter()
        bar = Progress(len(spec.runs), spec.name, done=summary.skipped, mode=progress if echo else "none",
                       echo=echo)
        params = [p for _, p in spec.runs]

        def report(i: int, result, was_stored: bool) -> None:
            if was_stored:
                return
            summary.ran += 1
            summary.diverged += int(result.diverged)
            status = "DIVERGED " if result.diverged else ""
            acc = result.final.get("val_acc", float("nan"))
            bar.write(f"[{summary.ran:>{width}}/{n_pending}] {keys[i][:10]} {_fmt_params(params[i])}  {status}"
                      f"val_acc {acc:.4f}  {result.wall_time:.1f}s")

        try:
            execute([c for c, _ in spec.runs], store, executor=executor, jobs=jobs, address=address,
                    threads=threads, tags={"sweep": spec.name}, params=params, progress=bar,
                    tally=Tally(), on_result=report)
        except UnitsFailed as e:
            summary.failed = list(e.failures)
        finally:
            bar.close()
    say(f"{spec.name}: ran {summary.ran}, diverged {summary.diverged}, failed {len(summary.failed)}, "
        f"skipped {summary.skipped} in {time.perf_counter() - t0:.1f}s")
    if echo is not None:
        sys.stdout.flush()
    return summary


def find_db(where: str | os.PathLike | None = None, *, command: str = "normlab") -> Path:
    """The run database a read command (ls/show/plot/export) means. ``where``: a spec file (``.toml``: its
    output directory), a directory holding ``normlab.sqlite``, or the file itself; None looks in the default
    output directories of ``normlab run`` and ``normlab claims`` (``./normlab-runs``, ``./claims-report``).

    Raises :class:`DatabaseNotFound` with one line saying where it looked and how to point elsewhere, or
    SpecError for a spec file that is not valid.
    """
    hint = f"point {command} at one with --db (a spec file, a directory holding {DB_NAME}, or the file)"
    if where is None:
        looked = [Path(p) / DB_NAME for p in DEFAULT_PLACES]
        for p in looked:
            if p.is_file():
                return p
        raise DatabaseNotFound(f"{command}: no run database found (looked for {', '.join(map(str, looked))} in "
                               f"{Path.cwd()}); {hint}")
    p = Path(where).expanduser()
    if p.suffix == ".toml":
        spec = load_spec(p)
        candidate = spec.db_path
    elif p.is_dir():
        candidate = p / DB_NAME
    else:
        candidate = p
    if not candidate.is_file():
        raise DatabaseNotFound(f"{command}: no run database at {candidate}; {hint}")
    return candidate
