"""normlab.tools.fold: the pure fold against the float64 reference, whole-model folding on random architectures
(torch and normlab norms mixed), the fx and module-order paths, and every refusal with an unchanged model."""

import copy
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from normlab import nn as nlnn
from normlab import reference as ref
from normlab.tools import fold_batchnorm, fold_into, plan_fold


def randomize_norms(model, seed=0):
    """Non-trivial running statistics and affine parameters (identity stats would hide a wrong fold)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 2 + 0.2)
                for p in (m.weight, m.bias):
                    if p is not None:
                        p.copy_(torch.randn(p.shape, generator=gen))
    return model


def assert_same_outputs(folded, model, x):
    with torch.no_grad():
        want, got = model(x), folded(x)
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)


def norm_count(model):
    return sum(isinstance(m, (nn.modules.batchnorm._BatchNorm, nlnn.BatchNormBase)) for m in model.modules())


def state_copy(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_equal(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k


# -- the pure function ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transposed,groups", [(False, 1), (False, 3), (True, 1), (True, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("affine", ["both", "none", "weight_only", "bias_only"])
def test_fold_into_matches_reference_conv_then_inference_norm(transposed, groups, with_bias, affine):
    torch.manual_seed(1)
    cin, cout = 6, 9
    conv_cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    conv = conv_cls(cin, cout, 3, groups=groups, bias=with_bias, stride=2 if transposed else 1).double()
    mean, var = torch.randn(cout, dtype=torch.float64), torch.rand(cout, dtype=torch.float64) + 0.1
    gamma = torch.randn(cout, dtype=torch.float64) if affine in ("both", "weight_only") else None
    beta = torch.randn(cout, dtype=torch.float64) if affine in ("both", "bias_only") else None
    w, b = fold_into(conv.weight, conv.bias, mean, var, 1e-3, gamma, beta, transposed=transposed, groups=groups)
    assert w.shape == conv.weight.shape and b.shape == (cout,)
    x = torch.randn(2, cin, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        z = conv(x).numpy()
    want = ref.batch_norm_inference(z, mean.numpy(), var.numpy(), gamma, beta, eps=1e-3)
    fconv = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d
    kw = dict(stride=2) if transposed else {}
    got = fconv(x, w, b, groups=groups, **kw).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_fold_into_keeps_dtype_and_rejects_wrong_shapes():
    w = torch.randn(4, 3, dtype=torch.float32)
    nw, nb = fold_into(w, None, torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64), 1e-5)
    assert nw.dtype == torch.float32 and nb.dtype == torch.float32
    with pytest.raises(ValueError, match=r"fold_into: expected running_var of shape \(4,\).*got \(5,\)"):
        fold_into(w, None, torch.zeros(4), torch.ones(5), 1e-5)
    with pytest.raises(ValueError, match="groups=2 does not divide the weight's 3 input channels"):
        fold_into(torch.randn(3, 2, 3), None, torch.zeros(4), torch.ones(4), 1e-5, transposed=True, groups=2)


# -- whole models ---------------------------------------------------------------------------------------------
def sequential_mixed():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.ConvTranspose2d(8, 6, 3, stride=2, groups=2, output_padding=1), nlnn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 3, groups=3, padding=1, padding_mode="reflect"), nlnn.BatchNorm(6, scale=False), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 14 * 14, 7), nlnn.BatchNorm1d(7), nn.Tanh(), nn.Linear(7, 5, bias=False),
        nn.BatchNorm1d(5, affine=False),
    ), torch.randn(4, 3, 8, 8)


class Block3d(nn.Module):
    """Not Sequential: a 3D conv path, a transposed 1D path and a residual."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1, bias=False)
        self.bn = nlnn.BatchNorm3d(4, center=False)
        self.up = nn.ConvTranspose3d(4, 4, 2, stride=2, groups=4, bias=False)
        self.bn_up = nn.BatchNorm3d(4)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.bn_up(self.up(y)).mean(dim=(2, 3, 4))


class Seq1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5), nn.GELU())
        self.deconv = nn.ConvTranspose1d(5, 6, 4, stride=2, groups=1, dilation=2)
        self.norm = nlnn.BatchNorm1d(6)
        self.proj = nn.Linear(6, 4)
        self.seq_norm = nlnn.BatchNorm(4, axis=-1)  # (N, L, C): channels last, Linear's features

    def forward(self, x):
        h = self.norm(self.deconv(self.stem(x)))
        return self.seq_norm(self.proj(h.transpose(1, 2)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1, bias=False)
        self.bn2 = nlnn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)


ARCHS = {
    "sequential_mixed": sequential_mixed,
    "block3d": lambda: (Block3d(), torch.randn(2, 2, 3, 4, 3)),
    "seq1d": lambda: (Seq1d(), torch.randn(3, 3, 9)),
    "residual": lambda: (nn.Sequential(Residual(), Residual()), torch.randn(2, 4, 5, 5)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_folded_model_matches_eval_model_and_folds_every_norm(arch, dtype):
    torch.manual_seed(0)
    model, x = ARCHS[arch]()
    model = randomize_norms(model.to(dtype)).eval()
    x = x.to(dtype)
    before = state_copy(model)
    report = plan_fold(model)
    assert report.skipped == [] and len(report.folded) == norm_count(model) > 0
    assert report.traced == [""]
    folded = fold_batchnorm(model)
    assert norm_count(folded) == 0 and type(folded) is type(model)
    assert all(p.dtype == dtype for p in folded.parameters())
    assert_same_outputs(folded, model, x)
    assert_state_equal(model, before)  # inplace=False: the original is untouched


def test_inplace_folds_the_given_model():
    model, x = sequential_mixed()
    model = randomize_norms(model).eval()
    reference = copy.deepcopy(model)
    out = fold_batchnorm(model, inplace=True)
    assert out is model and norm_count(model) == 0
    assert isinstance(model[1], nn.Identity)
    assert model[0].bias is not None and model[0].bias.requires_grad  # the bias-free conv gained a trainable bias
    assert_same_outputs(model, reference, x)


def test_report_names_pairs():
    model = randomize_norms(sequential_mixed()[0]).eval()
    report = plan_fold(model)
    assert ("0", "1") in report.folded and ("13", "14") in report.folded
    assert "5 of 5 batch-norm layers folded" in str(report)


# -- structures that must not fold ------------------------------------------------------------------------------
class Untraceable(nn.Module):
    """Data-dependent control flow defeats torch.fx; the Sequential children still fold by module order."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nlnn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 3)
        self.head_bn = nn.BatchNorm1d(3)

    def forward(self, x):
        h = self.features(x).mean(dim=(2, 3))
        if h.sum() > 0:  # data-dependent: symbolic tracing fails here
            h = h * 2
        return self.head_bn(self.head(h))


def test_untraceable_model_falls_back_to_module_order():
    torch.manual_seed(0)
    model = randomize_norms(Untraceable()).eval()
    x = torch.randn(3, 3, 6, 6)
    report = plan_fold(model)
    assert report.untraced and report.untraced[0][0] == ""
    assert "features" in report.traced  # the child traces on its own
    assert sorted(n for _, n in report.folded) == ["features.1", "features.4"]
    [(name, reason)] = report.skipped
    assert name == "head_bn" and "not reached" in reason
    with pytest.warns(UserWarning, match="skipped head_bn: not reached"):
        folded = fold_batchnorm(model)
    assert isinstance(folded.head_bn, nn.BatchNorm1d)
    assert_same_outputs(folded, model, x)


class UntraceableSequential(nn.Sequential):
    def forward(self, x):
        for m in self:
            x = m(x)
            if x.mean() > 1e9:  # never true, but not traceable
                break
        return x


def test_untraceable_sequential_uses_adjacency_only():
    model = randomize_norms(
        UntraceableSequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nlnn.BatchNorm2d(4))
    ).eval()
    report = plan_fold(model)
    assert report.folded == [("0", "1")]
    assert report.skipped[0][0] == "3"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folded = fold_batchnorm(model)
    assert_same_outputs(folded, model, torch.randn(2, 3, 5, 5))


class SharedOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.act = nn.ReLU()
        self.bn_after_act = nlnn.BatchNorm2d(3)

    def forward(self, x):
        z = self.conv(x)
        return self.bn(z) + z + self.bn_after_act(self.act(x))


def test_norm_whose_input_is_shared_or_not_a_layer_is_skipped_with_reason():
    model = randomize_norms(SharedOutput()).eval()
    report = plan_fold(model)
    reasons = dict(report.skipped)
    assert "the output of 'conv' is also used by" in reasons["bn"]
    assert "its input is module 'act', not the output of a Conv" in reasons["bn_after_act"]
    before = state_copy(model)
    with pytest.raises(ValueError, match=r"(?s)strict=True.*model unchanged"):
        fold_batchnorm(model, inplace=True, strict=True)
    assert_state_equal(model, before)
    assert isinstance(model.bn, nn.BatchNorm2d)


class SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.conv(x)


def test_layer_called_twice_is_not_folded():
    report = plan_fold(SharedConv().eval())
    assert report.folded == [] and "'conv' is called more than once" in report.skipped[0][1]


def test_training_mode_is_skipped_then_strict_raises_and_model_is_unchanged():
    model, x = sequential_mixed()
    model = randomize_norms(model)
    model.train()
    before = state_copy(model)
    report = plan_fold(model)
    assert report.folded == [] and all("training mode" in r and "model.eval()" in r for _, r in report.skipped)
    with pytest.raises(ValueError, match=r"(?s)fold_batchnorm\(strict=True\).*in training mode.*model.eval\(\)"):
        fold_batchnorm(model, inplace=True, strict=True)
    assert_state_equal(model, before)
    assert norm_count(model) == 5
    with pytest.warns(UserWarning, match="0 of 5 batch-norm layers folded"):
        fold_batchnorm(model, inplace=True)
    assert norm_count(model) == 5


def test_batch_statistics_in_eval_are_not_folded():
    model = nn.Sequential(
        nn.Conv2d(3, 3, 1), nlnn.BatchNorm2d(3, eval_stats="batch"),
        nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False),
    ).eval()
    reasons = dict(plan_fold(model).skipped)
    assert "eval_stats='batch'" in reasons["1"]
    assert "track_running_stats=False" in reasons["3"]


def test_no_batch_norm_raises_and_leaves_model():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.GroupNorm(1, 3))
    before = state_copy(model)
    with pytest.raises(ValueError, match="fold_batchnorm: the model has no batch-norm layer"):
        fold_batchnorm(model, inplace=True)
    assert_state_equal(model, before)
    assert "no batch-norm layer" in str(plan_fold(model))
    with pytest.raises(TypeError, match="fold_batchnorm: expected a torch.nn.Module, got list"):
        fold_batchnorm([nn.BatchNorm2d(3)])


def test_wrong_axis_and_odd_subclass_are_refused():
    class Doubling(nlnn.BatchNorm1d):
        """Eval mode is not the running-statistics affine map: folding it would be wrong."""

        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(
        nn.Conv1d(3, 4, 1), nlnn.BatchNorm(4, axis=-1),  # channels-last after a channels-first conv
        nn.Linear(5, 5), Doubling(5),
    ).eval()
    reasons = dict(plan_fold(model).skipped)
    assert "channel axis -1 is not the channel axis (1) of the Conv1d" in reasons["1"]
    assert "not the running-statistics affine map (Doubling)" in reasons["3"]


def test_per_time_step_statistics_are_not_folded():
    model = nn.Sequential(nn.Linear(3, 3), nlnn.TimeStepBatchNorm(3, max_steps=4)).eval()
    [(name, reason)] = plan_fold(model).skipped
    assert name == "1" and "running statistics have shape (4, 3), not one value per channel" in reason


# -- NormAct: act(BN(z)) folds its BN into the layer before it ------------------------------------------------------
def normact_model(inplace_abn=False):
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nlnn.NormAct("bn", 6, activation="leaky_relu", inplace_abn=inplace_abn),
        nn.Conv2d(6, 5, 3),
        nlnn.NormAct(nn.BatchNorm2d(5), activation="elu"),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 4),
        nlnn.NormAct("bn", 4, activation="relu"),
    )


@pytest.mark.parametrize("inplace_abn", [False, True])
def test_normact_batch_norm_folds_and_keeps_the_activation(inplace_abn):
    torch.manual_seed(0)
    model = randomize_norms(normact_model(inplace_abn)).double().eval()
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    report = plan_fold(model)
    assert report.folded == [("0", "1.norm"), ("2", "3.norm"), ("5", "6.norm")] and not report.skipped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folded = fold_batchnorm(model)
    assert norm_count(folded) == 0 and norm_count(model) == 3  # the copy is folded, the model is not
    assert all(isinstance(folded[i], nlnn.NormAct) and isinstance(folded[i].norm, nn.Identity) for i in (1, 3, 6))
    assert [folded[i].activation for i in (1, 3, 6)] == ["leaky_relu", "elu", "relu"]
    assert not folded[1].inplace_abn and model[1].inplace_abn == inplace_abn
    # independent float64 formula: act(conv'(x)) with the folded weights equals act(BN(conv(x))) of the eval model
    with torch.no_grad():
        bn = model[1].norm
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        z = nn.functional.conv2d(x, model[0].weight, padding=1)
        want = nn.functional.leaky_relu(
            s.view(1, -1, 1, 1) * (z - bn.running_mean.view(1, -1, 1, 1)) + bn.bias.view(1, -1, 1, 1), 0.01
        )
        torch.testing.assert_close(folded[1](folded[0](x)), want)
        torch.testing.assert_close(folded(x), model(x.clone()))  # clone: in-place ABN overwrites its input


def test_normact_batch_norm_folds_through_the_module_order_fallback():
    class Gate(nn.Module):
        def forward(self, x):
            return x if x.mean() < 1e9 else x * 0  # data-dependent: the Sequential does not trace

    model = randomize_norms(nn.Sequential(
        nn.Conv2d(3, 4, 3), nlnn.NormAct("bn", 4), Gate(), nlnn.NormAct("bn", 4),
    )).eval()
    report = plan_fold(model)
    assert report.untraced and report.untraced[0][0] == ""
    assert report.folded == [("0", "1.norm")]
    [(name, reason)] = report.skipped
    assert name == "3.norm" and "not reached" in reason
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(UserWarning, match=r"skipped 3.norm: not reached"):
        folded = fold_batchnorm(model)
    assert isinstance(folded[1].norm, nn.Identity) and isinstance(folded[3].norm, nlnn.BatchNorm)
    assert_same_outputs(folded, model, x)


def test_normact_that_cannot_fold_says_why_and_changes_nothing():
    model = randomize_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nlnn.NormAct("ln", 4), nlnn.NormAct("bn", 4)))
    model.train()
    report = plan_fold(model)
    [(name, reason)] = report.skipped
    assert name == "2.norm" and "in training mode" in reason
    model.eval()
    [(name, reason)] = plan_fold(model).skipped
    assert name == "2.norm" and "its input is module '1', not the output of a Conv" in reason
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"fold_batchnorm\(strict=True\): cannot fold every batch norm"):
        fold_batchnorm(model, strict=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- kinds: a fold is checked numerically on the layer's input, never silently wrong --------------------------------
def linear_then_channel_norm(norm):
    """Linear(5, 5) acting on the last axis L of (N, C, L) = (N, 5, 5), then a norm over axis 1 (C)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 5), norm)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 5, 5) * 3 + 2)
    return randomize_norms(model).eval()


AXIS_NORMS = {
    "torch_bn1d": lambda: nn.BatchNorm1d(5),
    "normlab_bn1d": lambda: nlnn.BatchNorm1d(5),
    "normlab_bn": lambda: nlnn.BatchNorm(5),
    "normact": lambda: nlnn.NormAct("bn", 5),
}


@pytest.mark.parametrize("norm", sorted(AXIS_NORMS))
def test_kind_fold_axis_mismatch(norm):
    model = linear_then_channel_norm(AXIS_NORMS[norm]())
    x3 = torch.randn(4, 5, 5)
    name = "1.norm" if norm == "normact" else "1"
    before = state_copy(model)
    # with the example input the pair is checked on the Linear's actual input, and refused with the reason
    report = plan_fold(model, x3)
    assert report.folded == []
    [(skipped, reason)] = report.skipped
    assert skipped == name and "acts on the last axis of its (4, 5, 5) output, but the norm normalizes axis 1" in reason
    with pytest.raises(ValueError, match="cannot fold every batch norm"):
        fold_batchnorm(model, strict=True, example_input=x3)
    with pytest.warns(UserWarning, match="acts on the last axis"):
        folded = fold_batchnorm(model, example_input=x3)
    assert_same_outputs(folded, model, x3)
    assert_state_equal(model, before)
    # without it the fold assumes (N, C) features and guards that: a 3D input raises instead of a wrong output
    report = plan_fold(model)
    assert report.folded == [("0", name)]
    folded = fold_batchnorm(model)
    x2 = torch.randn(4, 5)
    assert_same_outputs(folded, model, x2)
    with pytest.raises(ValueError, match=rf"folded norm '{re.escape(name)}': .*for \(N, C\) inputs, got a 3D input"):
        folded(x3)
    # on (N, C) example inputs the same pair folds
    assert plan_fold(model, x2).folded == [("0", name)]


def every_pair_kind():
    """Every producer kind with torch and normlab norms, NormAct, channels-last after a Linear; inputs to match."""
    return nn.ModuleDict({
        "conv1d": nn.Sequential(nn.Conv1d(3, 4, 3, stride=2), nn.BatchNorm1d(4)),
        "conv2d": nn.Sequential(nn.Conv2d(3, 4, 3, dilation=2, padding=1), nlnn.BatchNorm2d(4)),
        "conv3d": nn.Sequential(nn.Conv3d(3, 4, 2, bias=False), nn.BatchNorm3d(4)),
        "convt1d": nn.Sequential(nn.ConvTranspose1d(3, 4, 3, stride=2), nlnn.BatchNorm1d(4)),
        "convt2d": nn.Sequential(nn.ConvTranspose2d(3, 4, 2, stride=2, groups=1), nlnn.NormAct("bn", 4, activation="elu")),
        "convt3d": nn.Sequential(nn.ConvTranspose3d(3, 4, 2, groups=1), nlnn.BatchNorm3d(4)),
        "linear": nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)),
        "linear_seq": nn.Sequential(nn.Linear(3, 4), nlnn.BatchNorm(4, axis=-1)),
        "conv_last": nn.Sequential(nn.Conv2d(3, 4, 1), nlnn.BatchNorm(4, axis=-3)),
    })


PAIR_INPUTS = {
    "conv1d": (2, 3, 9), "conv2d": (2, 3, 6, 6), "conv3d": (2, 3, 3, 3, 3), "convt1d": (2, 3, 4),
    "convt2d": (2, 3, 3, 3), "convt3d": (2, 3, 2, 2, 2), "linear": (4, 3), "linear_seq": (2, 6, 3),
    "conv_last": (2, 3, 4, 4),
}


@pytest.mark.parametrize("kind", sorted(PAIR_INPUTS))
@pytest.mark.parametrize("with_example", [True, False])
def test_kind_fold_axis_mismatch_every_pair_kind_is_checked(kind, with_example):
    model = randomize_norms(every_pair_kind()[kind].double()).eval()
    x = torch.randn(PAIR_INPUTS[kind], dtype=torch.float64)
    example = x if with_example else None
    report = plan_fold(model, example)
    assert report.skipped == [] and len(report.folded) == 1
    assert_same_outputs(fold_batchnorm(model, example_input=example), model, x)


def test_kind_fold_axis_mismatch_check_compares_outputs(monkeypatch):
    """The check compares folded and unfolded outputs: a fold that computed wrong weights would be refused."""
    from normlab.tools import fold as fold_module

    model = randomize_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).eval()
    real = fold_module.fold_into

    def off_by_one_channel(*args, **kwargs):
        weight, bias = real(*args, **kwargs)
        return weight, bias + torch.tensor([0.0, 0.5, 0.0, 0.0], dtype=bias.dtype)

    monkeypatch.setattr(fold_module, "fold_into", off_by_one_channel)
    for example in (None, torch.randn(2, 3, 5, 5)):
        [(name, reason)] = plan_fold(model, example).skipped
        assert name == "1" and "the folded layer differs from norm(layer(x)) by 0.5" in reason


def test_kind_fold_axis_mismatch_bad_example_input():
    model = linear_then_channel_norm(nn.BatchNorm1d(5))
    with pytest.raises(ValueError, match=r"plan_fold: the eval-mode model failed on example_input: RuntimeError"):
        plan_fold(model, torch.randn(2, 3))
    with pytest.raises(TypeError, match="plan_fold: example_input must be a Tensor or a non-empty tuple of Tensors"):
        fold_batchnorm(model, example_input=[1, 2])
    assert model[1].training is False


NONFINITE = ["1.running_var", "1.running_mean", "1.weight", "1.bias", "0.weight", "0.bias"]


@pytest.mark.parametrize("where", NONFINITE)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_kind_nonfinite_weights(where, value):
    """NaN or inf in the layer's or the norm's tensors: the plan refuses the pair naming the tensor (no cryptic
    'atol must be greater than or equal to zero'); strict folding raises; the model is unchanged."""
    model = randomize_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nlnn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)))
    model.eval()
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        tensors[where].view(-1)[1] = value
    before = state_copy(model)
    label = "NaN" if value != value else "inf"
    owner = "the norm's" if where.startswith("1.") else "the Conv2d's"
    attr = where.split(".")[1]
    for example in (None, torch.randn(2, 3, 6, 6)):
        report = plan_fold(model, example)
        assert report.folded == [("2", "3")]
        [(name, reason)] = report.skipped
        assert name == "1" and f"{owner} {attr} holds 1 {label} of" in reason and "would spread them" in reason
    with pytest.raises(ValueError, match=rf"(?s)strict=True.*{owner} {attr} holds 1 {label}"):
        fold_batchnorm(model, strict=True)
    with pytest.warns(UserWarning, match=f"holds 1 {label}"):
        folded = fold_batchnorm(model)
    assert isinstance(folded[1], nlnn.BatchNorm2d) and isinstance(folded[3], nn.Identity)
    for k, v in before.items():
        torch.testing.assert_close(model.state_dict()[k], v, equal_nan=True)


def test_kind_tool_misuse_example_input_passed_as_inplace():
    """fold_batchnorm(model, x) / fuse_norm_act(model, x): the tensor lands in ``inplace``; a one-element tensor
    used to fold the caller's model in place without the example check, a larger one gave torch's "Boolean value
    of Tensor ... is ambiguous". Now a TypeError naming the argument, the model unchanged."""
    from normlab.tools import fuse_norm_act

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU())
    model.train()
    model(torch.randn(16, 1))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for fn in (fold_batchnorm, fuse_norm_act):
        for x in (torch.full((1, 1), 0.5), torch.randn(2, 1)):
            with pytest.raises(TypeError, match=rf"{fn.__name__}: inplace must be True or False, got Tensor"):
                fn(model, x)
            assert isinstance(model[1], torch.nn.BatchNorm1d) and model[1].__class__ is torch.nn.BatchNorm1d
            for k, v in model.state_dict().items():
                assert torch.equal(v, before[k]), k
