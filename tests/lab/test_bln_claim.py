"""The batch-layer-norm claim: per-epoch reset of BLN's running statistics (TrainConfig.reset_stats_every_epoch),
arms with and without the paper's 1/sqrt(d), per-arm tuned rates, CNN and RNN (and MLP) families, and a headline
that is the worst case over the article's two families."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from normlab.lab.claims import batch_layer_norm as B
from normlab.lab.claims import get_claim
from normlab.lab.claims.base import Context
from normlab.lab.train import RunResult, TrainConfig, train
from normlab.lab.tuning import TUNING_SEED_BASE


def _mix_config(**kw):
    args = dict(data="gaussian_mixture", data_args={"n": 200, "dim": 5, "classes": 3}, model="mlp", norm="bln",
                model_args={"widths": [8]}, optimizer="sgd", lr=0.05, batch_size=16, epochs=3, drop_last=True)
    args.update(kw)
    return TrainConfig(**args)


def _bln_layers(net):
    return [m for m in net.modules() if type(m).__name__ == "BatchLayerNorm"]


def test_bln_epoch_stats_reset_keeps_only_the_current_epochs_batches():
    with_reset = train(_mix_config(reset_stats_every_epoch=True), progress="none", threads=1)
    without = train(_mix_config(), progress="none", threads=1)
    per_epoch = len(with_reset.step_rows) // 3
    assert per_epoch > 1 and len(with_reset.step_rows) == len(without.step_rows) == 3 * per_epoch
    (a,), (b,) = _bln_layers(with_reset.model), _bln_layers(without.model)
    # momentum=None: the running statistics are the cumulative average of the batches since the last reset
    assert a.momentum is None and int(a.num_batches_tracked) == per_epoch
    assert int(b.num_batches_tracked) == 3 * per_epoch
    assert not math.isclose(float(a.running_mean.sum()), float(b.running_mean.sum()))


def test_bln_epoch_stats_option_is_validated():
    with pytest.raises(ValueError, match="reset_stats_every_epoch"):
        _mix_config(reset_stats_every_epoch="yes")


class _Fake(Context):
    """Answers each unit with a synthetic curve whose level is set per (family, norm): no training."""

    def __init__(self, *a, level_of, **kw):
        super().__init__(*a, **kw)
        self.seen: list[TrainConfig] = []
        self.level_of = level_of

    def map(self, configs, *, alone=False):
        self.seen += list(configs)
        out = []
        for c in configs:
            norm = "bln-nosqrt" if c.model_args.get("norm_kw", {}).get("scale_by_sqrt_features") is False else c.norm
            acc = self.level_of(c.model, norm, c.seed)
            out.append(RunResult(c, [], [{"step": 0, "val_acc": 0.1, "val_loss": 2.0},
                                         {"step": 4, "val_acc": acc, "val_loss": 1.0},
                                         {"step": 8, "val_acc": acc, "val_loss": 1.0}], {}))
        return out


def test_bln_claim_arms_reset_and_headline_is_the_worst_family():
    claim = get_claim("batch-layer-norm")
    lead = {"cnn": 0.05, "rnn": 0.02, "mlp": 0.3}  # BLN's lead over the better of BN and LN, per family

    def level_of(model, norm, seed):
        base = 0.5 + 0.01 * (seed % 7)
        return {"bln": base + lead[model], "bln-nosqrt": base + 0.1, "bn": base, "ln": base - 0.01}[norm]

    ctx = _Fake(claim, "tiny", [0, 1, 2], Path("/nonexistent"), level_of=level_of)
    out = claim.run(ctx)
    arms = {(c.model, c.norm, c.model_args.get("norm_kw", {}).get("scale_by_sqrt_features", True))
            for c in ctx.seen}
    assert arms == {(f, n, s) for f in ("cnn", "rnn", "mlp")
                    for n, s in (("bln", True), ("bln", False), ("bn", True), ("ln", True))}
    assert all(c.reset_stats_every_epoch == (c.norm == "bln") for c in ctx.seen)
    tuning = [c for c in ctx.seen if "tuning_fraction" in c.data_args]
    assert tuning and all(c.seed >= TUNING_SEED_BASE for c in tuning)
    assert set(out.arms) == {f"{f}/{n}" for f in ("cnn", "rnn", "mlp") for n in B.NORMS}
    # headline: per seed, the smaller over CNN and RNN (not the MLP) of AUC(BLN) - max(AUC(BN), AUC(LN));
    # the AUC here is the mean of the two evaluations after step 0 (both at the level)
    for s in (0, 1, 2):
        assert out.metrics[B.LEAD]["bln"][s] == pytest.approx(min(lead["cnn"], lead["rnn"]))
        assert out.metrics[B.LEAD][B.BEST][s] == 0.0
        assert out.metrics[B.LEAD_NOSQRT]["bln-nosqrt"][s] == pytest.approx(0.1)
    assert claim.rule.metric == B.LEAD and claim.rule.treatment == "bln" and claim.rule.margin > 0
    assert out.figures and "per-epoch" in out.figures[0].caption


def test_bln_claim_quick_runs_the_articles_two_families_and_the_full_level_adds_the_mlp():
    claim = get_claim("batch-layer-norm")
    assert {"cnn", "rnn"} <= set(claim.configs["quick"]) and "mlp" not in claim.configs["quick"]
    assert {"cnn", "rnn", "mlp"} <= set(claim.configs["full"])
    c = B._config("rnn", "bln-nosqrt", 0, claim.configs["quick"])
    assert c.norm == "bln" and c.model_args["norm_kw"] == {"scale_by_sqrt_features": False}
    assert c.model_args["init"] == "xavier" and c.model_args["cell"] == "tanh"
    assert B._config("cnn", "bn", 0, claim.configs["quick"]).reset_stats_every_epoch is False
