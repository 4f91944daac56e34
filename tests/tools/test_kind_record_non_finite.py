"""Kind: ActivationRecorder recording a non-finite statistic (NaN or inf) silently. Every statistic -- input
moments and percentiles, per-unit percentiles, variance shift, input and weight gradient norms, on training steps
and on observe() probes -- now warns once per watched layer, naming the layer and the statistic; the records
themselves are the same as without the warning."""

import math
import warnings

import pytest
import torch
from torch import nn

from normlab import nn as nlnn
from normlab.tools import ActivationRecorder


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 1))


def _same(a, b) -> bool:
    """Equal field by field, NaN equal to NaN."""
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _train(model, xs, **kw):
    with ActivationRecorder(model, **kw) as rec:
        for x in xs:
            model(x).sum().backward()
    return rec


def _messages(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_kind_record_non_finite_input_warns_once_per_layer_and_records_as_is():
    xs = [torch.randn(16, 5) for _ in range(3)]
    xs[1][3, 2] = float("nan")  # one bad value on step 1, and again on step 2
    xs[2][0, 0] = float("nan")
    model = mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = _train(model, xs)
    msgs = _messages(caught)
    assert len(msgs) == 2, msgs  # two watched layers ("1" ReLU, "3" Tanh), one warning each over two bad steps
    for layer in ("1", "3"):
        (msg,) = [m for m in msgs if f"layer '{layer}'" in m]
        assert "non-finite mean, std, p15, p50, p85 at step 1" in msg, msg
    bad = [r for r in rec.records if r.step == 1]
    assert all(math.isnan(r.mean) and math.isnan(r.std) and math.isnan(r.p50) for r in bad)
    quiet_model = mlp()  # the same run with warnings ignored records exactly the same
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet = _train(quiet_model, xs)
    assert len(quiet.rows()) == len(rec.rows()) and all(
        _same(list(a.values()), list(b.values())) for a, b in zip(quiet.rows(), rec.rows()))


def test_kind_record_non_finite_infinite_input_and_unit_percentiles():
    model = mlp()
    x = torch.randn(16, 5)
    x[0, 1] = float("inf")
    with pytest.warns(RuntimeWarning, match=r"layer '1' recorded a non-finite .*std"):
        rec = _train(model, [x], modules=["1"], stats=("moments", "unit_percentiles"), grads=False)
    (r,) = rec.records
    assert not math.isfinite(r.mean) and not math.isfinite(r.std)  # inf, and the std of values with an inf: nan


def test_kind_record_non_finite_unit_percentiles_alone():
    model = mlp()
    x = torch.randn(16, 5)
    x[:, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match=r"layer '1' recorded a non-finite unit_percentiles at step 0"):
        _train(model, [x], modules=["1"], stats=("unit_percentiles",), grads=False)


def test_kind_record_non_finite_gradients():
    model = mlp()
    x = torch.randn(16, 5)
    with pytest.warns(RuntimeWarning) as caught, ActivationRecorder(model, modules=["2"]) as rec:
        (model(x).sum() * float("inf")).backward()  # finite activations, non-finite gradients
    msgs = _messages(caught)
    # backward reaches the weight before the input: the first non-finite one is named, once for the layer
    assert len(msgs) == 1 and "layer '2' recorded a non-finite weight_grad_norm at step 0" in msgs[0], msgs
    (r,) = rec.records
    assert math.isfinite(r.mean) and not math.isfinite(r.grad_norm) and not math.isfinite(r.weight_grad_norm)
    model = mlp()  # the input gradient alone (the ReLU has no weight)
    with pytest.warns(RuntimeWarning, match=r"layer '1' recorded a non-finite grad_norm at step 0"):
        with ActivationRecorder(model, modules=["1"]):
            (model(x).sum() * float("inf")).backward()


def test_kind_record_non_finite_variance_shift_and_observe():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nlnn.BatchNorm1d(4), nn.ReLU())
    rec = ActivationRecorder(model, modules=["1"], stats=("variance_shift",))
    x = torch.randn(16, 5)
    x[2, 1] = float("nan")
    with pytest.warns(RuntimeWarning, match=r"layer '1' recorded a non-finite variance_shift at step 3"):
        (r,) = rec.observe(x, step=3)
    assert math.isnan(r.variance_shift)


def test_kind_record_non_finite_finite_data_warns_nothing():
    model = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = _train(model, [torch.randn(16, 5) for _ in range(2)], stats=("moments", "percentiles", "dead",
                                                                            "unit_percentiles"))
    assert len(rec.records) == 4
