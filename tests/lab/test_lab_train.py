"""normlab.lab.train: the engine against a hand-written loop, determinism, schedules, divergence, callbacks."""

from __future__ import annotations

import math

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
