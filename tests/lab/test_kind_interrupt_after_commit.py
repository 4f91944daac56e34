"""Kind: a Ctrl-C that lands after a store transaction finished in SQLite but before Python saw it return. The
KeyboardInterrupt arrived after `COMMIT` had stored a unit; `Store.save`'s handler then issued `ROLLBACK` with no
transaction open, and `normlab run` died with "sqlite3.OperationalError: cannot rollback - no transaction is active"
(a traceback, exit 1) instead of its one-line "interrupted" message (exit 130); and the unit, stored, was not counted
in that message. Seen once in `test_ctrl_c_stops_workers_prints_one_line_and_a_rerun_resumes` from a fresh clone.

Every store transaction now rolls back only what is open, and the interrupted count comes from the store. The
interrupt is injected here deterministically: a connection wrapper raises KeyboardInterrupt right after SQLite ran
the statement, the moment the signal handler fired in the failing run."""

from __future__ import annotations

import sqlite3

import pytest

from normlab.lab.executors import Interrupted, Tally, execute
from normlab.lab.store import Store, run_key
from normlab.lab.train import TrainConfig, train


def _config(seed: int) -> TrainConfig:
    return TrainConfig(data="gaussian_mixture", data_args={"n": 200, "dim": 5, "classes": 3, "seed": 0}, model="mlp",
                       model_args={"depth": 1, "width": 8}, norm="bn", steps=6, batch_size=16, eval_every=3, seed=seed)


class _InterruptAfter:
    """The store's connection, raising KeyboardInterrupt after the ``nth`` (1-based) run of ``statement`` finished."""

    def __init__(self, db: sqlite3.Connection, statement: str, nth: int = 1) -> None:
        self._db, self._statement, self._left = db, statement, nth

    def execute(self, sql, *args):
        out = self._db.execute(sql, *args)
        if sql == self._statement:
            self._left -= 1
            if self._left == 0:
                raise KeyboardInterrupt
        return out

    def __getattr__(self, name):
        return getattr(self._db, name)


@pytest.mark.parametrize("statement", ["COMMIT", "ROLLBACK"])
def test_kind_interrupt_after_commit_save_raises_the_interrupt_and_keeps_the_store_usable(tmp_path, statement):
    """After COMMIT the unit is stored; after the duplicate check's ROLLBACK nothing changed. Either way the
    KeyboardInterrupt itself propagates, and the connection is left with no transaction open."""
    result = train(_config(0))
    with Store(tmp_path / "runs.db") as store:
        if statement == "ROLLBACK":
            assert store.save(result)  # stored once, so the second save takes the duplicate path's ROLLBACK
        real = store._db
        store._db = _InterruptAfter(real, statement)
        with pytest.raises(KeyboardInterrupt):
            store.save(result)
        store._db = real
        assert not real.in_transaction
        assert store.has(run_key(result.config))
        assert len(store.keys()) == 1
        assert store.save(train(_config(1)))  # the next write works
        assert len(store.keys()) == 2


def test_kind_interrupt_after_commit_interrupted_counts_what_the_store_holds(tmp_path):
    """Ctrl-C after the second unit's COMMIT: 2 units are in the store, and the Interrupted line says 2 of 3."""
    configs = [_config(s) for s in range(3)]
    with Store(tmp_path / "runs.db") as store:
        real = store._db
        store._db = _InterruptAfter(real, "COMMIT", nth=2)
        tally = Tally()
        with pytest.raises(Interrupted) as info:
            execute(configs, store, alone=True, progress="none", tally=tally)
        store._db = real
        assert len(store.keys()) == 2
        assert tally.stored == 2 and tally.known == 3
        assert info.value.line() == "interrupted: 2 of 3 units stored; rerun the same command to resume"
