"""The Ray executor on a real local Ray instance (num_cpus=2, one per module): a small spec and a tiny claims run
leave the same store as the local executor (same keys, same metrics)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest

if os.environ.get("CI"):  # `make test` installs the [cluster] extra: on CI a missing Ray is a failure
    import ray
else:
    ray = pytest.importorskip("ray", reason="Ray is the optional extra normlab[cluster]; `make test` installs it")

sys.path.insert(0, str(Path(__file__).parent))

from normlab.lab.report import run_claims
from normlab.lab.store import DB_NAME, Store
from normlab.lab.sweep import load_spec, run_grid

SPEC = """
name = "ray-vs-local"
[base]
data = "gaussian_mixture"
model = "mlp"
steps = 12
batch_size = 16
eval_every = 4
[base.data_args]
n = 200
dim = 5
classes = 3
[base.model_args]
depth = 2
width = 8
[grid]
norm = ["bn", "none"]
seed = [0, 1]
"""


@pytest.fixture(scope="module")
def ray_instance():
    import logging

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


def _content(db: Path) -> dict:
    """key -> (config, final, diverged, step rows and evaluations without wall-clock time, claim, level, sweep)."""
    def clean(v):
        return "nan" if isinstance(v, float) and math.isnan(v) else v

    with Store(db) as store:
        return {r.key: (r.config, {k: clean(v) for k, v in r.final.items()}, r.diverged, r.claim, r.level, r.sweep,
                        [tuple(clean(v) for k, v in s.items() if k != "time") for s in store.steps(r.key)],
                        [tuple(clean(v) for k, v in e.items() if k != "time") for e in store.evals(r.key)])
                for r in store.runs()}


def test_ray_runs_a_spec_into_the_same_store_as_the_local_executor(tmp_path, ray_instance):
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(SPEC)
    s_ray = run_grid(load_spec(spec_path, out=tmp_path / "ray"), executor="ray", jobs=2, echo=None, threads=1)
    s_local = run_grid(load_spec(spec_path, out=tmp_path / "local"), jobs=1, echo=None, threads=1)
    assert (s_ray.ran, s_ray.failed) == (4, []) and (s_local.ran, s_local.failed) == (4, [])
    ray_db, local_db = _content(tmp_path / "ray" / DB_NAME), _content(tmp_path / "local" / DB_NAME)
    assert set(ray_db) == set(local_db) == set(load_spec(spec_path).keys)
    assert ray_db == local_db
    again = run_grid(load_spec(spec_path, out=tmp_path / "ray"), executor="ray", jobs=2, echo=None, threads=1)
    assert (again.skipped, again.ran) == (4, 0)  # stored units are not sent to the cluster again
    assert ray.is_initialized()  # an instance the caller started is left running


def test_ray_runs_a_tiny_claims_run_into_the_same_store_as_the_local_executor(tmp_path, ray_instance):
    ids = ["careless-init"]  # a claim whose units are lab runs
    r_ray, _ = run_claims(ids, level="tiny", out_dir=str(tmp_path / "ray"), executor="ray", jobs=2, log=lambda s: None,
                          progress="none")
    r_local, _ = run_claims(ids, level="tiny", out_dir=str(tmp_path / "local"), jobs=1, log=lambda s: None,
                            progress="none")
    assert r_ray[0].error == r_local[0].error == ""
    assert r_ray[0].computed == r_local[0].computed > 0
    ray_db, local_db = _content(tmp_path / "ray" / DB_NAME), _content(tmp_path / "local" / DB_NAME)
    assert len(ray_db) == r_ray[0].computed and {v[3:5] for v in ray_db.values()} == {("careless-init", "tiny")}
    assert ray_db == local_db
    assert r_ray[0].outcome.metrics == r_local[0].outcome.metrics
