"""benchmarks/scale_out.py's estimate reads per-unit times from a store (a benchmark is never asserted on its
figures, but its code must run: an import it depends on moved once without anyone noticing)."""

import importlib.util
from pathlib import Path

from normlab.lab.store import DB_NAME, Store
from normlab.lab.train import TrainConfig, train

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scale_out.py"


def test_scale_out_reads_unit_times_from_a_store(tmp_path):
    spec = importlib.util.spec_from_file_location("scale_out", SCRIPT)
    scale_out = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale_out)
    config = TrainConfig(data="gaussian_mixture", data_args={"n": 100}, model="mlp", norm="bn",
                         model_args={"widths": [8]}, steps=2)
    result = train(config, progress="none")
    with Store(tmp_path / DB_NAME) as store:
        store.save(result, claim="demo-claim", level="tiny")
    times = scale_out._unit_times(tmp_path)
    assert times == [("demo-claim", result.wall_time)]
