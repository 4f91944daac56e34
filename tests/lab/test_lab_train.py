"""normlab.lab.train: the engine against a hand-written loop, determinism, schedules, divergence, callbacks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from normlab.lab import data
from normlab.lab.models import build_model
from normlab.lab.train import Callback, TrainConfig, evaluate, lr_at, train

MIX = dict(n=300, dim=6, classes=3, separation=3.0, seed=0)


@pytest.fixture(scope="module")
def mixture():
    return data.gaussian_mixture(**MIX)


def cfg(**kw) -> TrainConfig:
    base = dict(data="gaussian_mixture", data_args=MIX, model="mlp", norm="bn",
                model_args={"depth": 2, "width": 16}, batch_size=32, epochs=2, optimizer="sgd", lr=0.1, momentum=0.9)
    base.update(kw)
    return TrainConfig(**base)


def _hand_loop(config: TrainConfig, ds: data.Dataset):
    """The loop the engine claims to be: same seed, same order, same slices; returns losses, accs, grad norms, model."""
    torch.manual_seed(config.seed)
    net = build_model(config.model, ds.input_shape, ds.num_classes, norm=config.norm, **config.model_args)
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum)
    gen = torch.Generator().manual_seed(config.seed)
    losses, accs, norms = [], [], []
    n = len(ds.y_train)
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=gen)
        for lo in range(0, n, config.batch_size):
            idx = perm[lo : lo + config.batch_size]
            if len(idx) == 1:
                continue
            xb, yb = ds.x_train[idx], ds.y_train[idx]
            opt.zero_grad()
            out = net(xb)
            loss = F.cross_entropy(out, yb)
            loss.backward()
            g = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in net.parameters()))
            opt.step()
            losses.append(loss.item())
            accs.append((out.argmax(1) == yb).double().mean().item())
            norms.append(g.item())
    return losses, accs, norms, net


@pytest.mark.parametrize("norm", ["bn", "none"])
def test_engine_matches_a_hand_written_loop(mixture, norm):
    config = cfg(norm=norm)
    res = train(config, dataset=mixture, progress="none")
    losses, accs, norms, net = _hand_loop(config, mixture)
    assert res.history("loss") == pytest.approx(losses, rel=1e-6)
    assert res.history("acc") == pytest.approx(accs, abs=1e-12)
    assert res.history("grad_norm") == pytest.approx(norms, rel=1e-5)
    assert res.history("step") == list(range(1, len(losses) + 1))
    for (k, a), b in zip(res.model.state_dict().items(), net.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    # final validation metrics are those of the trained model in eval mode
    vl, va = evaluate(net, mixture.x_val, mixture.y_val)
    assert res.final["val_loss"] == pytest.approx(vl, rel=1e-6) and res.final["val_acc"] == va
    assert res.final["test_acc"] == evaluate(net, mixture.x_test, mixture.y_test)[1]


def test_deterministic_given_seed(mixture):
    a = train(cfg(optimizer="adam", lr=0.01), dataset=mixture, progress="none")
    b = train(cfg(optimizer="adam", lr=0.01), dataset=mixture, progress="none")
    c = train(cfg(optimizer="adam", lr=0.01, seed=1), dataset=mixture, progress="none")
    assert a.history("loss") == b.history("loss") and a.final == b.final
    assert a.history("loss") != c.history("loss")


def test_dataset_by_name_equals_dataset_object(mixture):
    by_name = train(cfg(epochs=1), progress="none")
    given = train(cfg(epochs=1), dataset=mixture, progress="none")
    assert by_name.history("loss") == given.history("loss")


def test_step_count_eval_points_and_tiny_last_batch():
    # 180 training examples (300 * 0.6), batch 179: the second batch would hold one example and is skipped
    r = train(cfg(batch_size=179, epochs=3, eval_every=0), progress="none")
    assert [row[1] for row in r.step_rows] == [1, 2, 3]
    assert [e["step"] for e in r.evals] == [0, 1, 2, 3]
    r = train(cfg(batch_size=50, steps=10, eval_every=4), progress="none")
    assert len(r.step_rows) == 10 and [e["step"] for e in r.evals] == [0, 4, 8, 10]
    assert [row[1] for row in r.step_rows] == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3]  # 180 / 50 -> 4 batches (last 30)
    r = train(cfg(batch_size=50, epochs=1, drop_last=True), progress="none")
    assert len(r.step_rows) == 3
    # train_* of an evaluation average the steps since the previous one
    r = train(cfg(batch_size=50, steps=8, eval_every=4), progress="none")
    assert r.evals[1]["train_loss"] == pytest.approx(sum(r.history("loss")[:4]) / 4)
    assert r.evals[2]["train_acc"] == pytest.approx(sum(r.history("acc")[4:8]) / 4)


@pytest.mark.parametrize(
    "schedule,expect",
    [
        ("constant", lambda s, T: 0.1),
        ("step", lambda s, T: 0.1 * 0.5 ** (s // 3)),
        ("exponential", lambda s, T: 0.1 * 0.5 ** (s / 3)),
        ("cosine", lambda s, T: 0.1 * 0.5 * (1 + math.cos(math.pi * s / T))),
    ],
)
def test_lr_schedules(schedule, expect):
    config = cfg(schedule=schedule, lr=0.1, lr_decay=0.5, lr_decay_every=3, steps=10)
    assert [lr_at(config, s, 10) for s in range(10)] == pytest.approx([expect(s, 10) for s in range(10)])
    r = train(config, progress="none")
    assert r.history("lr") == pytest.approx([expect(s, 10) for s in range(10)])


def test_warmup():
    config = cfg(schedule="cosine", lr=0.2, warmup_steps=4, steps=12)
    lrs = [lr_at(config, s, 12) for s in range(12)]
    assert lrs[:4] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert lrs[4:] == pytest.approx([0.2 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)])


def test_divergence_is_recorded_not_raised(mixture):
    r = train(cfg(norm="none", lr=1e12, momentum=0.0, epochs=5), dataset=mixture, progress="none")
    assert r.diverged and r.diverged_step is not None
    assert len(r.step_rows) == r.diverged_step - 1
    assert all(math.isfinite(v) for row in r.step_rows for v in row)
    assert all(math.isfinite(e["val_loss"]) for e in r.evals)
    assert r.final["val_acc"] == r.evals[-1]["val_acc"] and "test_acc" not in r.final


def test_divergence_injected_at_a_known_step(mixture):
    class Poison(Callback):
        def on_step(self, state, metrics):
            if state.step == 5:
                with torch.no_grad():
                    state.model[1].weight.fill_(float("nan"))

    r = train(cfg(norm="none", epochs=3, eval_every=2), dataset=mixture, callbacks=[Poison()], progress="none")
    # step 5's update is kept; its evaluation point does not come (eval every 2); step 6 sees a NaN loss
    assert r.diverged and r.diverged_step == 6 and len(r.step_rows) == 5
    assert [e["step"] for e in r.evals] == [0, 2, 4]


def test_callbacks_see_every_step_and_can_stop(mixture):
    events = []

    class Rec(Callback):
        def on_train_start(self, state):
            events.append(("start", state.step))

        def on_step(self, state, metrics):
            events.append(("step", metrics["step"], state.x.shape[0]))
            if metrics["step"] == 4:
                state.stop = True

        def on_eval(self, state, metrics):
            events.append(("eval", metrics["step"]))

        def on_train_end(self, state, result):
            events.append(("end", result.final["steps"]))

    seen = []
    r = train(cfg(), dataset=mixture, callbacks=[Rec(), lambda s, m: seen.append(m["loss"])], progress="none")
    assert events == [("start", 0), ("eval", 0)] + [("step", k, 32) for k in range(1, 5)] + [("eval", 4), ("end", 4)]
    assert seen == r.history("loss") and len(seen) == 4


def test_on_train_end_runs_when_training_raises(mixture):
    ended = []

    class Boom(Callback):
        def on_step(self, state, metrics):
            raise RuntimeError("boom")

        def on_train_end(self, state, result):
            ended.append(result)

    with pytest.raises(RuntimeError, match="boom"):
        train(cfg(), dataset=mixture, callbacks=[Boom()], progress="none")
    assert ended == [None]


def test_threads_are_restored(mixture):
    before = torch.get_num_threads()
    train(cfg(epochs=1), dataset=mixture, progress="none", threads=1)
    assert torch.get_num_threads() == before


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match=r"optimizer='rmsprop' is not allowed; expected one of \['adam', 'sgd'\]"):
        cfg(optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"schedule='linear' is not allowed; expected one of \['constant'"):
        cfg(schedule="linear")
    with pytest.raises(ValueError, match=r"batch_size=0 is not allowed; expected an int >= 1"):
        cfg(batch_size=0)
    with pytest.raises(ValueError, match=r"lr=nan is not allowed; expected a finite number >= 0"):
        cfg(lr=float("nan"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lrate'\]"):
        TrainConfig.from_dict({"lrate": 0.1})
    with pytest.raises(ValueError, match=r"train: progress='loud' is not allowed"):
        train(cfg(), progress="loud")


def test_key_is_a_hash_of_the_whole_config():
    assert cfg().key() == cfg().key()
    assert cfg().key() != cfg(lr=0.1000001).key()
    assert cfg().key() != cfg(model_args={"depth": 2, "width": 17}).key()
    assert len(cfg().key()) == 16


def test_progress_bar_when_asked_and_quiet_otherwise(mixture, capsys):
    train(cfg(epochs=1), dataset=mixture, progress="bar")
    assert "step" in capsys.readouterr().err  # tqdm's "n/N [.., step/s]" line
    train(cfg(epochs=1), dataset=mixture, progress="auto")  # stderr is captured, not a terminal: no bar
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------------ trainable and probes
def test_trainable_norms_and_head_leave_every_other_parameter_at_its_init(mixture):
    from normlab.nn import BatchNormBase

    for which in ("norms", "head"):
        config = cfg(trainable=which, epochs=1)
        torch.manual_seed(config.seed)
        init = build_model(config.model, mixture.input_shape, mixture.num_classes, norm="bn", **config.model_args)
        res = train(config, dataset=mixture, progress="none")
        last = [m for m in res.model.modules() if isinstance(m, torch.nn.Linear)][-1]
        moved = {id(p) for p in (
            [p for m in res.model.modules() if isinstance(m, BatchNormBase) for p in m.parameters()]
            if which == "norms" else list(last.parameters()))}
        for p, p0 in zip(res.model.parameters(), init.parameters()):
            assert torch.equal(p, p0) != (id(p) in moved), which
    with pytest.raises(ValueError, match=r"trainable='bias' is not allowed; expected one of \['all', 'norms', 'head', 'random'\]"):
        cfg(trainable="bias")
    with pytest.raises(ValueError, match=r"trainable='norms' but the model has no such parameters"):
        train(cfg(trainable="norms", norm="none"), dataset=mixture, progress="none")


def test_probes_are_validated_with_named_errors():
    with pytest.raises(ValueError, match=r"probes\['x'\]: expected a table with kind one of \['activations'"):
        cfg(probes={"x": {"kind": "nope"}})
    with pytest.raises(ValueError, match=r"probes\['x'\]: unknown option\(s\) \['evry'\] for kind 'gradients'"):
        cfg(probes={"x": {"kind": "gradients", "evry": 3}})
    with pytest.raises(ValueError, match=r"probes\['x'\]: stats=\['median'\] is not allowed; expected a list of"):
        cfg(probes={"x": {"kind": "activations", "stats": ["median"]}})
    with pytest.raises(ValueError, match=r"probes\['x'\]: modes=\['batch-1'\] is not allowed"):
        cfg(probes={"x": {"kind": "eval_modes", "modes": ["batch-1"]}})
    with pytest.raises(ValueError, match=r"probes=\[1\] is not allowed; expected a table"):
        cfg(probes=[1])
    assert cfg(probes={"g": {"kind": "gradients"}}).key() != cfg().key()  # part of the run key


def _noisy(**kw):
    """Dropout and Santurkar noise: probes in training mode draw random numbers; the run must not see them."""
    return cfg(model_args={"widths": [16, 16], "dropout": 0.2, "noise_shift": 0.3, "noise_scale": 0.3}, **kw)


def test_probes_leave_the_training_run_unchanged(mixture):
    probes = {
        "act": {"kind": "activations", "stats": ["moments", "dead", "unit_percentiles"], "mode": "train", "every": 3},
        "eval_act": {"kind": "activations", "layers": "norms", "stats": ["variance_shift"], "every": 5},
        "grads": {"kind": "gradients", "every": 2},
        "land": {"kind": "landscape", "every": 4},
        "tr": {"kind": "eval_train", "n": 50},
        "modes": {"kind": "eval_modes", "modes": ["running", "recalibrated", "batch-8"], "every": 5,
                  "recalibrate_n": 100, "recalibrate_batch": 20},
        "pop": {"kind": "population", "every": 6},
    }
    plain = train(_noisy(), dataset=mixture, progress="none")
    probed = train(_noisy(probes=probes), dataset=mixture, progress="none")
    assert [r[:5] for r in probed.step_rows] == [r[:5] for r in plain.step_rows]
    assert probed.final == plain.final and set(probed.probes) == set(probes)
    for a, b in zip(probed.model.state_dict().values(), plain.model.state_dict().values()):
        assert torch.equal(a, b)
    json.dumps(probed.probes)  # JSON-able (the store keeps them as JSON)
    total = len(plain.step_rows)
    assert probed.probes["act"]["steps"] == sorted({0, *range(3, total, 3), total})
    assert probed.probes["grads"]["steps"] == list(range(0, total, 2))
    assert probed.probes["modes"]["steps"] == sorted({0, *range(5, total, 5), total})
    assert probed.probes["tr"]["steps"] == [e["step"] for e in probed.evals]


def test_activation_probe_equals_an_independent_computation_on_the_final_model(mixture):
    config = cfg(model_args={"widths": [16, 16]}, probes={
        "a": {"kind": "activations", "stats": ["dead", "unit_percentiles"], "n": 80, "first": False},
        "v": {"kind": "activations", "layers": "norms", "stats": ["variance_shift"], "first": False}})
    res = train(config, dataset=mixture, progress="none")
    net = res.model.eval()
    x = mixture.x_val[:80]
    with torch.no_grad():
        h1 = net[2](net[1](x))  # input of the first ReLU
        h2 = net[5](net[4](net[3](h1)))
        bn_in = [net[1](x), net[4](net[3](h1))]
    a = res.probes["a"]
    assert a["layers"] == ["3", "6"] and a["steps"] == [len(res.step_rows)]
    for h, dead, pct in zip((h1, h2), a["dead_fraction"][0], a["unit_percentiles"][0]):
        assert dead == pytest.approx((h <= 0).all(0).double().mean().item())
        np.testing.assert_allclose(pct, np.percentile(h.numpy(), [15, 50, 85], axis=0).T, rtol=1e-5, atol=1e-6)
    for inp, bn, shift in zip(bn_in, (net[2], net[5]), res.probes["v"]["variance_shift"][0]):
        want = np.abs(np.log(inp.double().var(0).numpy() / bn.running_var.double().numpy())).mean()
        assert shift == pytest.approx(want, rel=1e-9)


def test_gradient_probe_equals_the_gradient_of_the_first_training_step(mixture):
    config = cfg(probes={"g": {"kind": "gradients", "every": 100}}, epochs=1)
    res = train(config, dataset=mixture, progress="none")
    torch.manual_seed(config.seed)
    net = build_model(config.model, mixture.input_shape, mixture.num_classes, norm="bn", **config.model_args)
    perm = torch.randperm(len(mixture.y_train), generator=torch.Generator().manual_seed(config.seed))
    idx = perm[: config.batch_size]
    F.cross_entropy(net(mixture.x_train[idx]), mixture.y_train[idx]).backward()
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    g = res.probes["g"]
    assert g["steps"] == [0] and len(g["layers"]) == len(linears)
    np.testing.assert_allclose(g["weight_grad_norm"][0], [float(m.weight.grad.norm()) for m in linears], rtol=1e-5)


def test_landscape_eval_modes_and_population_equal_independent_computations(mixture):
    from normlab.tools import recalibrate

    bs = 32
    config = cfg(batch_size=bs, probes={
        "land": {"kind": "landscape", "etas": [0.5, 1.0], "first": False},
        "modes": {"kind": "eval_modes", "modes": ["running", "batch-1000", "batch-8"], "first": False},
        "pop": {"kind": "population", "first": False, "average": "pooled"}})
    res = train(config, dataset=mixture, progress="none")
    net = res.model
    x, y = mixture.x_train[:bs], mixture.y_train[:bs]  # after the last step: the first batch_size examples
    params = list(net.parameters())
    base = [p.detach().clone() for p in params]
    net.train()
    g0 = torch.autograd.grad(F.cross_entropy(net(x), y), params)
    losses = [F.cross_entropy(net(x), y).item()]
    changes = []
    with torch.no_grad():
        for eta in (0.5, 1.0):
            for p, g, b in zip(params, g0, base):
                p.copy_(b - eta * g)
            with torch.enable_grad():
                loss = F.cross_entropy(net(x), y)
                g1 = torch.autograd.grad(loss, params)
            losses.append(loss.item())
            changes.append(float(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(g1, g0)))))
        for p, b in zip(params, base):
            p.copy_(b)
    land = res.probes["land"]
    assert land["loss_range"][0] == pytest.approx(max(losses) - min(losses), rel=1e-5)
    assert land["grad_change"][0] == pytest.approx(max(changes), rel=1e-5)
    modes = res.probes["modes"]
    assert modes["running"] == [res.final["val_acc"]]  # the engine's own evaluation (running statistics)
    import copy

    batch = copy.deepcopy(net)
    for m in batch.modules():
        if hasattr(m, "eval_stats"):
            m.eval_stats = "batch"
    assert modes["batch-8"] == [evaluate(batch, mixture.x_val, mixture.y_val, 8)[1]]
    pop = copy.deepcopy(net)
    n = len(mixture.y_train)
    recalibrate(pop, [mixture.x_train[i:i + bs] for i in range(0, n - bs + 1, bs)], progress=False)
    assert res.probes["pop"]["val_acc"] == [evaluate(pop, mixture.x_val, mixture.y_val)[1]]


def test_latency_probe_times_trained_folded_and_reference_models(mixture):
    config = cfg(probes={"lat": {"kind": "latency", "batch_sizes": [1, 4], "rounds": 3, "inner": 1}}, epochs=1)
    lat = train(config, dataset=mixture, progress="none").probes["lat"]
    for b in ("1", "4"):
        assert set(lat[b]) == {"trained", "folded", "reference"}
        assert all(len(v) == 3 and min(v) > 0 for v in lat[f"{b}-all"].values())
        assert lat[b]["trained"] == sorted(lat[f"{b}-all"]["trained"])[1]
    assert lat["max_abs_diff_folded"] < 1e-4


def test_population_probe_needs_one_whole_batch_and_a_failing_probe_leaves_no_hook(mixture):
    config = cfg(batch_size=32, probes={"g": {"kind": "gradients"}, "pop": {"kind": "population", "n": 20}})
    torch.manual_seed(0)
    net = build_model(config.model, mixture.input_shape, mixture.num_classes, norm="bn", **config.model_args)
    with pytest.raises(ValueError, match=r"probe 'pop': expected at least one whole batch of 32 among the first 20"):
        train(config, model=net, dataset=mixture, progress="none")
    assert not net._forward_pre_hooks and all(not m._forward_pre_hooks for m in net.modules())
    assert all(not p._backward_hooks for p in net.parameters())
