"""benchmarks/scale_out.py's estimate reads per-unit times from a store (a benchmark is never asserted on its
figures, but its code must run: an import it depends on moved once without anyone noticing)."""

from normlab.lab.store import DB_NAME, Store
from normlab.lab.train import TrainConfig, train


def test_scale_out_reads_unit_times_from_a_store(tmp_path, load_benchmark):
    scale_out = load_benchmark("scale_out")
    config = TrainConfig(data="gaussian_mixture", data_args={"n": 100}, model="mlp", norm="bn",
                         model_args={"widths": [8]}, steps=2)
    result = train(config, progress="none")
    with Store(tmp_path / DB_NAME) as store:
        store.save(result, claim="demo-claim", level="tiny")
    times = scale_out._unit_times(tmp_path)
    assert times == [("demo-claim", result.wall_time)]
