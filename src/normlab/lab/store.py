"""The run store: one SQLite file (WAL mode) holding every finished run and its per-step metrics.

A run's key is :func:`run_key`: the hash of its whole :class:`~normlab.lab.train.TrainConfig` plus
:func:`code_version`, a digest of normlab's source, so results computed by other code are recomputed rather than
reused. A run is written in ONE transaction when it has finished (config, final metrics, probes, every step row
and every evaluation), so a process killed at any moment leaves either the whole run or nothing; the key is the
primary key and :meth:`Store.save` checks for it inside the write transaction, so no run is ever stored twice.
Only the driver of a sweep or a claims run writes (see :mod:`normlab.lab.executors`).

Tables: ``runs(key, sweep, config, params, final, diverged, diverged_step, wall_time, created, version, claim,
level, code, probes)`` with JSON text in ``config`` / ``params`` / ``final`` / ``probes`` (``claim`` and ``level``
are empty for runs of a spec); ``steps(key, step, epoch, loss, acc, grad_norm, lr, time)``;
``evals(key, step, epoch, train_loss, train_acc, val_loss, val_acc, time)``. NaN metrics are stored as NULL
(``probes`` keeps NaN as the JSON token ``NaN``, which Python's json reads back). Databases written before the
``claim``/``level``/``code``/``probes`` columns existed are migrated in place when opened.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .train import EVAL_COLUMNS, STEP_COLUMNS, RunResult, TrainConfig

__all__ = ["Store", "RunRecord", "DB_NAME", "open_store", "code_version", "run_key", "DatabaseNotFound"]

DB_NAME = "normlab.sqlite"

_RUN_COLUMNS = ("key", "sweep", "config", "params", "final", "diverged", "diverged_step", "wall_time", "created",
                "version", "claim", "level", "code", "probes")
# Columns added after the first release of the store: (name, SQL type) added to older databases when opened.
_ADDED_COLUMNS = (("claim", "TEXT NOT NULL DEFAULT ''"), ("level", "TEXT NOT NULL DEFAULT ''"),
                  ("code", "TEXT NOT NULL DEFAULT ''"), ("probes", "TEXT NOT NULL DEFAULT '{}'"))

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY, sweep TEXT, config TEXT NOT NULL, params TEXT NOT NULL, final TEXT NOT NULL,
    diverged INTEGER NOT NULL, diverged_step INTEGER, wall_time REAL, created REAL, version TEXT,
    {", ".join(f"{n} {t}" for n, t in _ADDED_COLUMNS)}
);
CREATE TABLE IF NOT EXISTS steps (
    key TEXT NOT NULL, {", ".join(f"{c} {'INTEGER' if c in ('step', 'epoch') else 'REAL'}" for c in STEP_COLUMNS)},
    PRIMARY KEY (key, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evals (
    key TEXT NOT NULL, {", ".join(f"{c} {'INTEGER' if c in ('step', 'epoch') else 'REAL'}" for c in EVAL_COLUMNS)},
    PRIMARY KEY (key, step)
) WITHOUT ROWID;
"""


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A digest (16 hex digits) of normlab's own source files, part of every run key: results of other code (a
    changed claim, layer or kernel) are recomputed, unchanged code reuses them."""
    root = Path(__file__).resolve().parents[1]  # the normlab package
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root).as_posix()).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def run_key(config: TrainConfig, code: str | None = None) -> str:
    """The store's key of a run: SHA-256 (16 hex digits) of the canonical JSON of the whole ``config`` and the code
    digest (``code``, default :func:`code_version`). Unlike ``config.key()`` it changes when normlab's code does."""
    text = json.dumps({"config": config.to_dict(), "code": code if code is not None else code_version()},
                      sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class DatabaseNotFound(ValueError):
    """No run database where a read command looked; the message says where and how to point elsewhere."""


def _clean(v: Any) -> Any:
    """NaN/Inf -> None, recursively (SQLite and strict JSON have no NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _nan(v: Any) -> Any:
    return float("nan") if v is None else v


@dataclass
class RunRecord:
    """One stored run (metrics are loaded on demand with :meth:`Store.steps` / :meth:`Store.evals`)."""

    key: str
    sweep: str
    config: dict
    params: dict
    final: dict
    diverged: bool
    diverged_step: int | None
    wall_time: float
    created: float
    version: str = ""
    claim: str = ""
    level: str = ""
    code: str = ""
    probes: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def label(self, exclude: Iterable[str] = ("seed",)) -> str:
        """``k=v`` of the grid parameters, without ``exclude`` (runs that differ only by seed share a label)."""
        skip = set(exclude)
        return " ".join(f"{k}={v}" for k, v in sorted(self.params.items()) if k not in skip) or self.config["model"]


class Store:
    """Access to one run database. ``Store(path)`` creates the file and tables if needed (and adds the columns of
    newer versions to an older database).

    Safe to use from several processes at once (WAL journal, 60 s busy timeout); use one Store per process.
    Raises ValueError naming the file when it is not a normlab run database.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise ValueError(f"Store: {self.path}: expected a normlab SQLite run database, found {e}") from None

    def _migrate(self) -> None:
        have = {r[1] for r in self._db.execute("PRAGMA table_info(runs)")}
        missing = [(n, t) for n, t in _ADDED_COLUMNS if n not in have]
        if not missing:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            have = {r[1] for r in self._db.execute("PRAGMA table_info(runs)")}  # another process may have done it
            for name, sql_type in missing:
                if name not in have:
                    self._db.execute(f"ALTER TABLE runs ADD COLUMN {name} {sql_type}")
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback_open()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------- writing
    def save(self, result: RunResult, *, sweep: str = "", params: dict | None = None, claim: str = "",
             level: str = "", code: str | None = None) -> bool:
        """Store a finished run in one transaction under :func:`run_key` (``code``: the code digest, default this
        process's); return False (and store nothing) if that key is already there."""
        from .. import __version__

        code = code if code is not None else code_version()
        key = run_key(result.config, code)
        probes = getattr(result, "probes", None) or {}
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # take the write lock before the existence check: no duplicate can slip in
        try:
            if db.execute("SELECT 1 FROM runs WHERE key = ?", (key,)).fetchone():
                db.execute("ROLLBACK")
                return False
            db.execute(
                f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) VALUES ({', '.join('?' * len(_RUN_COLUMNS))})",
                (
                    key, sweep, json.dumps(_clean(result.config.to_dict()), sort_keys=True),
                    json.dumps(_clean(params or {}), sort_keys=True), json.dumps(_clean(result.final), sort_keys=True),
                    int(result.diverged), result.diverged_step, result.wall_time, time.time(), __version__,
                    claim, level, code, json.dumps(probes, sort_keys=True, allow_nan=True),
                ),
            )
            db.executemany(
                f"INSERT INTO steps VALUES (?{', ?' * len(STEP_COLUMNS)})",
                ((key, *(_clean(v) for v in row)) for row in result.step_rows),
            )
            db.executemany(
                f"INSERT INTO evals VALUES (?{', ?' * len(EVAL_COLUMNS)})",
                ((key, *(_clean(e[c]) for c in EVAL_COLUMNS)) for e in result.evals),
            )
            db.execute("COMMIT")
        except BaseException:
            self._rollback_open()
            raise
        return True

    def _rollback_open(self) -> None:
        # A Ctrl-C (KeyboardInterrupt) can arrive after COMMIT or ROLLBACK finished in SQLite but before execute()
        # returned: then no transaction is open, and a ROLLBACK would raise over the interrupt.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    # ------------------------------------------------------------------------------------------------- reading
    def has(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM runs WHERE key = ?", (key,)).fetchone() is not None

    def keys(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT key FROM runs")}

    def _select(self, where: str = "", args: tuple = ()) -> list[tuple]:
        return self._db.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs {where}", args).fetchall()

    def _record(self, row: tuple) -> RunRecord:
        d = dict(zip(_RUN_COLUMNS, row))
        fin = {k: _nan(v) for k, v in json.loads(d["final"]).items()}
        return RunRecord(d["key"], d["sweep"] or "", json.loads(d["config"]), json.loads(d["params"]), fin,
                         bool(d["diverged"]), d["diverged_step"], d["wall_time"], d["created"], d["version"] or "",
                         claim=d["claim"] or "", level=d["level"] or "", code=d["code"] or "",
                         probes=json.loads(d["probes"] or "{}"))

    def runs(self, *, sweep: str | None = None, keys: Iterable[str] | None = None,
             claim: str | None = None) -> list[RunRecord]:
        """Stored runs in the order they finished, optionally only those of ``sweep``, of ``claim`` or with one of
        ``keys``."""
        out = [self._record(r) for r in self._select("ORDER BY created, key")]
        if sweep is not None:
            out = [r for r in out if r.sweep == sweep]
        if claim is not None:
            out = [r for r in out if r.claim == claim]
        if keys is not None:
            wanted = set(keys)
            out = [r for r in out if r.key in wanted]
        return out

    def get(self, key_prefix: str) -> RunRecord:
        """The run whose key starts with ``key_prefix`` (an error names the candidates if several match)."""
        rows = self._select("WHERE key >= ? AND key < ? ORDER BY key", (key_prefix, key_prefix + "\uffff"))
        if not rows:
            raise KeyError(f"{self.path}: no run with a key starting with {key_prefix!r}")
        if len(rows) > 1:
            raise KeyError(
                f"{self.path}: {len(rows)} runs have keys starting with {key_prefix!r} "
                f"({', '.join(r[0] for r in rows[:5])}{', ...' if len(rows) > 5 else ''}); give more characters"
            )
        return self._record(rows[0])

    def load_result(self, key: str) -> RunResult:
        """The stored run ``key`` (the exact key) as a :class:`~normlab.lab.train.RunResult`: config, step rows,
        evaluations, final metrics, probes, divergence and wall time (``model`` is None: models are not stored).
        A result computed now and the same result loaded back compare equal field by field (NaN as NaN).
        Raises KeyError naming the database when the key is not there."""
        rows = self._select("WHERE key = ?", (key,))
        if not rows:
            raise KeyError(f"{self.path}: no run with key {key!r}")
        rec = self._record(rows[0])
        kw: dict[str, Any] = {}
        if "probes" in {f.name for f in dataclasses.fields(RunResult)}:
            kw["probes"] = rec.probes
        return RunResult(
            TrainConfig.from_dict(rec.config),
            [tuple(s.values()) for s in self.steps(key)],
            self.evals(key),
            rec.final,
            rec.diverged,
            rec.diverged_step,
            rec.wall_time,
            **kw,
        )

    def _table(self, table: str, columns: tuple[str, ...], key: str) -> list[dict]:
        rows = self._db.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE key = ? ORDER BY step", (key,))
        return [{c: _nan(v) for c, v in zip(columns, r)} for r in rows]

    def steps(self, key: str) -> list[dict]:
        """Per-step metrics of run ``key`` (columns :data:`~normlab.lab.train.STEP_COLUMNS`)."""
        return self._table("steps", STEP_COLUMNS, key)

    def evals(self, key: str) -> list[dict]:
        """Evaluations of run ``key`` (columns :data:`~normlab.lab.train.EVAL_COLUMNS`)."""
        return self._table("evals", EVAL_COLUMNS, key)

    def count(self) -> dict[str, int]:
        return {t: self._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("runs", "steps", "evals")}


def open_store(path_or_dir: str | os.PathLike) -> Store:
    """Open an existing run database given its file or the output directory holding ``normlab.sqlite``."""
    p = Path(path_or_dir)
    if p.is_dir():
        p = p / DB_NAME
    if not p.exists():
        raise DatabaseNotFound(f"open_store: {p}: no such run database (expected {DB_NAME} in an output directory of "
                               f"`normlab run` or `normlab claims`)")
    _check_is_run_database(p)
    return Store(p)


def _check_is_run_database(p: Path) -> None:
    """Raise ValueError unless ``p`` already holds normlab's tables, looking read-only: opening another program's
    SQLite file (or an empty file) for reading must not add tables to it or switch its journal mode."""
    try:
        con = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            runs = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise ValueError(f"Store: {p}: expected a normlab SQLite run database, found {e}") from None
    if not {"runs", "steps", "evals"} <= tables or not {"key", "config", "final"} <= runs:
        found = ", ".join(sorted(tables)) if tables else "no tables"
        raise ValueError(f"Store: {p}: expected a normlab SQLite run database (tables runs, steps, evals), found "
                         f"{found}; the file was left as it was")


DEFAULT_PLACES = ("normlab-runs", "claims-report")


