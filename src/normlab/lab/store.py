"""The run store: one SQLite file (WAL mode) holding every finished run and its per-step metrics.

A run's key is the hash of its full :class:`~normlab.lab.train.TrainConfig` (``config.key()``). A run is written
in ONE transaction when it has finished (config, final metrics, every step row and every evaluation), so a
process killed at any moment leaves either the whole run or nothing; the key is the primary key and
:meth:`Store.save` checks for it inside the write transaction, so no run is ever stored twice, even when two
processes finish the same run.

Tables: ``runs(key, sweep, config, params, final, diverged, diverged_step, wall_time, created, version)`` with
JSON text in ``config`` / ``params`` / ``final``; ``steps(key, step, epoch, loss, acc, grad_norm, lr, time)``;
``evals(key, step, epoch, train_loss, train_acc, val_loss, val_acc, time)``. NaN metrics are stored as NULL.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .train import EVAL_COLUMNS, STEP_COLUMNS, RunResult

__all__ = ["Store", "RunRecord", "DB_NAME", "open_store"]

DB_NAME = "normlab.sqlite"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY, sweep TEXT, config TEXT NOT NULL, params TEXT NOT NULL, final TEXT NOT NULL,
    diverged INTEGER NOT NULL, diverged_step INTEGER, wall_time REAL, created REAL, version TEXT
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


def _clean(v: Any) -> Any:
    """NaN/Inf -> None, recursively (SQLite and strict JSON have no NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


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
    extra: dict = field(default_factory=dict)

    def label(self, exclude: Iterable[str] = ("seed",)) -> str:
        """``k=v`` of the grid parameters, without ``exclude`` (runs that differ only by seed share a label)."""
        skip = set(exclude)
        return " ".join(f"{k}={v}" for k, v in sorted(self.params.items()) if k not in skip) or self.config["model"]


class Store:
    """Access to one run database. ``Store(path)`` creates the file and tables if needed.

    Safe to use from several processes at once (WAL journal, 60 s busy timeout); use one Store per process.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise ValueError(f"Store: {self.path}: expected a normlab SQLite run database, found {e}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------- writing
    def save(self, result: RunResult, *, sweep: str = "", params: dict | None = None) -> bool:
        """Store a finished run in one transaction; return False (and store nothing) if its key is already there."""
        from .. import __version__

        key = result.config.key()
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # take the write lock before the existence check: no duplicate can slip in
        try:
            if db.execute("SELECT 1 FROM runs WHERE key = ?", (key,)).fetchone():
                db.execute("ROLLBACK")
                return False
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key, sweep, json.dumps(_clean(result.config.to_dict()), sort_keys=True),
                    json.dumps(_clean(params or {}), sort_keys=True), json.dumps(_clean(result.final), sort_keys=True),
                    int(result.diverged), result.diverged_step, result.wall_time, time.time(), __version__,
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
            db.execute("ROLLBACK")
            raise
        return True

    # ------------------------------------------------------------------------------------------------- reading
    def has(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM runs WHERE key = ?", (key,)).fetchone() is not None

    def keys(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT key FROM runs")}

    def _record(self, row: tuple) -> RunRecord:
        key, sweep, config, params, final, diverged, dstep, wall, created, version = row
        fin = {k: (float("nan") if v is None else v) for k, v in json.loads(final).items()}
        return RunRecord(key, sweep, json.loads(config), json.loads(params), fin, bool(diverged), dstep, wall,
                         created, version or "")

    def runs(self, *, sweep: str | None = None, keys: Iterable[str] | None = None) -> list[RunRecord]:
        """Stored runs in the order they finished, optionally only those of ``sweep`` or with one of ``keys``."""
        rows = self._db.execute("SELECT * FROM runs ORDER BY created, key").fetchall()
        out = [self._record(r) for r in rows]
        if sweep is not None:
            out = [r for r in out if r.sweep == sweep]
        if keys is not None:
            wanted = set(keys)
            out = [r for r in out if r.key in wanted]
        return out

    def get(self, key_prefix: str) -> RunRecord:
        """The run whose key starts with ``key_prefix`` (an error names the candidates if several match)."""
        rows = self._db.execute(
            "SELECT * FROM runs WHERE key >= ? AND key < ? ORDER BY key", (key_prefix, key_prefix + "\uffff")
        ).fetchall()
        if not rows:
            raise KeyError(f"{self.path}: no run with a key starting with {key_prefix!r}")
        if len(rows) > 1:
            raise KeyError(
                f"{self.path}: {len(rows)} runs have keys starting with {key_prefix!r} "
                f"({', '.join(r[0] for r in rows[:5])}{', ...' if len(rows) > 5 else ''}); give more characters"
            )
        return self._record(rows[0])

    def _table(self, table: str, columns: tuple[str, ...], key: str) -> list[dict]:
        rows = self._db.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE key = ? ORDER BY step", (key,))
        return [{c: (float("nan") if v is None else v) for c, v in zip(columns, r)} for r in rows]

    def steps(self, key: str) -> list[dict]:
        """Per-step metrics of run ``key`` (columns :data:`~normlab.lab.train.STEP_COLUMNS`)."""
        return self._table("steps", STEP_COLUMNS, key)

    def evals(self, key: str) -> list[dict]:
        """Evaluations of run ``key`` (columns :data:`~normlab.lab.train.EVAL_COLUMNS`)."""
        return self._table("evals", EVAL_COLUMNS, key)

    def count(self) -> dict[str, int]:
        return {t: self._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("runs", "steps", "evals")}


def open_store(path_or_dir: str | os.PathLike) -> Store:
    """Open a run database given its file or the output directory holding ``normlab.sqlite``."""
    p = Path(path_or_dir)
    if p.is_dir():
        p = p / DB_NAME
    if not p.exists():
        raise ValueError(f"open_store: {p}: no such run database (expected {DB_NAME} in an output directory of `normlab run`)")
    return Store(p)
