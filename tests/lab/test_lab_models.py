"""normlab.lab.models: structure of the seed/Ioffe models, options, init schemes, per-time-step recurrent BN."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normlab.lab import models
from normlab.nn import BatchNormBase

SHAPES = {"mnist": (1, 28, 28), "digits": (1, 8, 8)}


def _kinds(model: nn.Module) -> list[str]:
    return [type(m).__name__ for m in model if not isinstance(m, nn.Flatten)]


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("norm", ["bn", "none"])
@pytest.mark.parametrize("shape", ["mnist", "digits"])
def test_every_model_maps_images_to_logits(name, norm, shape):
    torch.manual_seed(0)
    net = models.build_model(name, SHAPES[shape], 10, norm=norm)
    out = net(torch.rand(6, *SHAPES[shape]))
    assert out.shape == (6, 10) and torch.isfinite(out).all()
    n_bn = sum(isinstance(m, BatchNormBase) for m in net.modules())
    assert (n_bn > 0) == (norm == "bn")
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_seed_mlp_is_the_keras_model():
    net = models.seed_mlp((1, 28, 28), 10, norm="bn")
    assert _kinds(net) == ["Linear", "ReLU", "BatchNorm", "Linear"]
    assert (net[1].in_features, net[1].out_features, net[4].out_features) == (784, 128, 10)
    assert net[3].num_features == 128
    assert _kinds(models.seed_mlp((1, 28, 28), 10, norm="none")) == ["Linear", "ReLU", "Identity", "Linear"]


def test_ioffe_mlp_norm_before_sigmoid():
    net = models.ioffe_mlp((1, 28, 28), 10, norm="bn")
    assert _kinds(net) == ["Linear", "BatchNorm", "Sigmoid"] * 3 + ["Linear"]
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [100, 100, 100, 10]


def test_dropout_position():
    after = models.mlp((4,), 3, depth=2, width=8, dropout=0.3, dropout_position="after")
    before = models.mlp((4,), 3, depth=2, width=8, dropout=0.3, dropout_position="before")
    assert _kinds(after) == ["Linear", "BatchNorm", "ReLU", "Dropout"] * 2 + ["Linear"]
    assert _kinds(before) == ["Linear", "Dropout", "BatchNorm", "ReLU"] * 2 + ["Linear"]
    cnn = models.cnn((1, 8, 8), 10, channels=(4,), dropout=0.2, dropout_position="before")
    assert _kinds(cnn)[:4] == ["Conv2d", "Dropout2d", "BatchNorm", "ReLU"]


@pytest.mark.parametrize("init,std", [("he", lambda f: math.sqrt(2 / f)), ("lecun", lambda f: math.sqrt(1 / f)),
                                      ("normal", lambda f: 0.01)])
def test_init_schemes_have_their_std_and_scale_multiplies(init, std):
    torch.manual_seed(0)
    net = models.mlp((400,), 10, depth=1, width=500, init=init, norm="none")
    w = net[1].weight
    assert abs(w.std().item() / std(400) - 1) < 0.03  # 200k samples: the relative error of the std is ~0.2%
    assert net[1].bias.abs().max() == 0
    torch.manual_seed(0)
    scaled = models.mlp((400,), 10, depth=1, width=500, init=init, norm="none", init_scale=3.0)
    torch.testing.assert_close(scaled[1].weight, 3.0 * w)


def test_xavier_std():
    torch.manual_seed(1)
    net = models.mlp((300,), 10, depth=1, width=600, init="xavier", norm="none")
    assert abs(net[1].weight.std().item() / math.sqrt(2 / 900) - 1) < 0.03


def test_resnet_shortcuts_and_stages():
    net = models.resnet((3, 16, 16), 5, widths=(4, 8), blocks_per_stage=2)
    blocks = [m for m in net if isinstance(m, models._BasicBlock)]
    assert len(blocks) == 4
    assert isinstance(blocks[0].shortcut, nn.Identity) and not isinstance(blocks[2].shortcut, nn.Identity)
    assert blocks[2].conv1.stride == (2, 2)
    assert net(torch.rand(3, 3, 16, 16)).shape == (3, 5)


def _recurrent_bn_reference(cell, x, mean_var=None):
    """Independent float64 recurrent BN cell (Cooijmans et al.): per-step batch statistics (biased variance), or
    given per-step (mean, var) pairs for both terms; gamma from the cell, beta 0. Returns logits and the
    per-step pre-activations of both terms."""
    eps = cell.norm_x.eps
    h = x.new_zeros(x.shape[0], cell.hidden)
    pre_x, pre_h = [], []
    for t in range(x.shape[1]):
        a, b = cell.w_h(h), cell.w_x(x[:, t])
        pre_h.append(a)
        pre_x.append(b)
        if mean_var is None:
            (mh, vh), (mx, vx) = [(z.mean(0), z.var(0, unbiased=False)) for z in (a, b)]
        else:
            (mh, vh), (mx, vx) = mean_var(t)
        h = torch.tanh(cell.norm_h.weight * (a - mh) / torch.sqrt(vh + eps)
                       + cell.norm_x.weight * (b - mx) / torch.sqrt(vx + eps) + cell.bias)
    return cell.head(h), pre_x, pre_h


@pytest.mark.parametrize("spec", ["bn", "tbn"])
def test_rnn_bn_is_recurrent_bn_with_per_step_statistics(spec):
    from normlab.nn import TimeStepBatchNorm

    torch.manual_seed(0)
    net = models.rnn((5, 3), 4, hidden=6, norm=spec).double()  # sequences of 5 steps of 3 features
    cell = net[1]
    for layer in (cell.norm_x, cell.norm_h):
        assert type(layer) is TimeStepBatchNorm and layer.max_steps == 5
        assert torch.equal(layer.weight, torch.full((6,), 0.1).double()) and layer.bias is None  # built in float32
    x = torch.randn(32, 5, 3, dtype=torch.float64) * torch.arange(1, 6).view(1, 5, 1)  # every step has its own scale
    net.train()
    out = net(x)
    with torch.no_grad():
        want, pre_x, pre_h = _recurrent_bn_reference(cell, x)
        torch.testing.assert_close(out, want)
        m = cell.norm_x.momentum
        for layer, pre in ((cell.norm_x, pre_x), (cell.norm_h, pre_h)):
            for t in range(5):
                torch.testing.assert_close(layer.running_mean[t], m * pre[t].mean(0))
                torch.testing.assert_close(layer.running_var[t], (1 - m) + m * pre[t].var(0, unbiased=True))
            assert layer.num_batches_tracked.tolist() == [1] * 5


def test_rnn_recurrent_bn_beyond_t_max_reuses_the_last_steps_running_statistics():
    torch.manual_seed(1)
    net = models.rnn((6, 3), 4, hidden=5, norm="tbn:3", norm_kw={"gamma_init": 0.5}).double()
    cell = net[1]
    assert cell.norm_x.max_steps == 3 and cell.norm_x.weight[0] == 0.5
    x = torch.randn(16, 6, 3, dtype=torch.float64) + torch.arange(6).view(1, 6, 1)
    net.train()
    net(x)  # steps 3..5 use their own batch statistics and update no running statistics
    assert cell.norm_h.num_batches_tracked.tolist() == [1, 1, 1]
    net.eval()
    with torch.no_grad():
        def running(t):
            k = min(t, 2)
            return [(n.running_mean[k], n.running_var[k]) for n in (cell.norm_h, cell.norm_x)]

        want, _, _ = _recurrent_bn_reference(cell, x, running)
        torch.testing.assert_close(net(x), want)


def test_rnn_other_specs_keep_one_layer_per_step():
    from normlab.nn import LayerNorm

    net = models.rnn((5, 3), 4, hidden=6, norm="ln")
    assert len(net[1].norm_x) == 5 and all(type(m) is LayerNorm for m in net[1].norm_h)
    with pytest.raises(ValueError, match=r"rnn: norm='bn:4' takes no ':<int>'; write 'tbn:<T_max>'"):
        models.rnn((5, 3), 4, norm="bn:4")


def test_rnn_reads_images_row_by_row():
    net = models.rnn((1, 8, 8), 10, hidden=5)
    assert net[1].norm_x.max_steps == 8 and net[1].w_x.in_features == 8
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(net[0](x), x[:, 0])


def test_bad_options_are_named():
    with pytest.raises(ValueError, match=r"model 'mlp': unknown option\(s\) \['deepth'\]; expected some of"):
        models.build_model("mlp", (4,), 2, deepth=3)
    with pytest.raises(ValueError, match=r"unknown model 'vgg'; expected one of \['cnn', 'ioffe_mlp'"):
        models.build_model("vgg", (4,), 2)
    with pytest.raises(ValueError, match=r"mlp: init='glorot' is not allowed; expected one of \['default', 'he'"):
        models.mlp((4,), 2, init="glorot")
    with pytest.raises(ValueError, match=r"mlp: dropout_position='middle' is not allowed"):
        models.mlp((4,), 2, dropout_position="middle")
    with pytest.raises(ValueError, match=r"mlp: activation='swish' is not allowed; expected one of \['relu'"):
        models.mlp((4,), 2, activation="swish")
    with pytest.raises(ValueError, match=r"mlp: dropout must lie in \[0, 1\), got 1.5"):
        models.mlp((4,), 2, dropout=1.5)
    with pytest.raises(ValueError, match=r"cnn: expected an image input_shape \(C, H, W\), got \(4,\)"):
        models.cnn((4,), 2)
    with pytest.raises(ValueError, match=r"norm spec|make_norm: unknown spec 'bogus'"):
        models.seed_mlp((4,), 2, norm="bogus")


def test_model_options_lists_builder_keywords():
    opts = models.model_options("mlp")
    assert opts["depth"] == 4 and opts["dropout_position"] == "after" and "norm" in opts


# InstanceNorm needs spatial positions: an MLP's or a recurrent cell's (N, C) features have none.
_SPEC_MODEL = [(s, m) for s in ("brn", "gbn:4", "mabn", "bln", "gn:4", "ln", "in", "rms")
               for m in ("mlp", "cnn", "resnet", "rnn") if not (s == "in" and m in ("mlp", "rnn"))]


@pytest.mark.parametrize("spec,name", _SPEC_MODEL)
def test_family_specs_build_and_train_one_step(spec, name):
    from normlab.nn import make_norm

    torch.manual_seed(0)
    shape = (1, 8, 8)
    net = models.build_model(name, shape, 10, norm=spec, **({"widths": (8, 8)} if name == "resnet" else {}))
    want = type(make_norm(spec, 8))
    assert any(type(m) is want for m in net.modules())
    x = torch.rand(16, *shape)
    loss = torch.nn.functional.cross_entropy(net(x), torch.arange(16) % 10)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


# ------------------------------------------------------------------------------------------------ BN-LSTM, h_0 noise
def _bn_lstm_reference(cell, x, h0):
    """Independent float64 BN-LSTM (Cooijmans et al., Eqs. 6-8) with per-step batch statistics (biased variance):
    gate terms normalized separately with gammas from the cell and beta 0, cell state with gamma_c and beta_c."""
    eps, H = cell.norm_x.eps, cell.hidden

    def bn(z, gamma, beta=0.0):
        return gamma * (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps) + beta

    h, c = h0, torch.zeros_like(h0)
    for t in range(x.shape[1]):
        z = (bn(h @ cell.w_h.weight.T, cell.norm_h.weight) + bn(x[:, t] @ cell.w_x.weight.T, cell.norm_x.weight)
             + cell.bias)
        f, i, o, g = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(bn(c, cell.norm_c.weight, cell.norm_c.bias))
    return h @ cell.head.weight.T + cell.head.bias


def test_rnn_lstm_cell_is_cooijmans_bn_lstm():
    from normlab.nn import TimeStepBatchNorm

    torch.manual_seed(2)
    net = models.rnn((4, 3), 5, hidden=6, norm="bn", cell="lstm", init_noise=0.1).double()
    cell = net[1]
    assert cell.w_h.out_features == cell.w_x.out_features == 24 and cell.bias.shape == (24,)
    assert torch.equal(cell.bias[:6], torch.ones(6).double()) and not cell.bias[6:].any()  # forget gate starts at 1
    for layer, width in ((cell.norm_x, 24), (cell.norm_h, 24), (cell.norm_c, 6)):
        assert type(layer) is TimeStepBatchNorm and layer.max_steps == 4 and layer.num_features == width
        assert torch.equal(layer.weight, torch.full((width,), 0.1).double())
    assert cell.norm_x.bias is None and cell.norm_h.bias is None  # beta_x = beta_h = 0: b is the shift
    with torch.no_grad():
        cell.norm_c.bias.uniform_(-0.5, 0.5)  # beta_c is learned and must reach the output
    x = torch.randn(16, 4, 3, dtype=torch.float64) * torch.arange(1, 5).view(1, 4, 1)
    net.train()
    torch.manual_seed(7)
    out = net(x)
    torch.manual_seed(7)
    h0 = torch.randn(16, 6, dtype=torch.float64) * 0.1  # the model draws h_0 first, with randn_like
    with torch.no_grad():
        torch.testing.assert_close(out, _bn_lstm_reference(cell, x, h0))
    assert cell.norm_c.num_batches_tracked.tolist() == [1] * 4


@pytest.mark.parametrize("norm", ["bn", "ln", "none"])
def test_rnn_init_noise_randomizes_h0_in_training_and_eval(norm):
    torch.manual_seed(0)
    x = torch.rand(8, 1, 5, 5)
    quiet = models.rnn((1, 5, 5), 3, hidden=4, norm=norm, cell="lstm").eval()
    noisy = models.rnn((1, 5, 5), 3, hidden=4, norm=norm, cell="lstm", init_noise=0.1).eval()
    noisy.load_state_dict(quiet.state_dict())
    with torch.no_grad():
        assert torch.equal(quiet(x), quiet(x))  # h_0 = 0: deterministic
        assert not torch.equal(noisy(x), noisy(x))  # h_0 drawn afresh in eval mode too
        assert not torch.allclose(noisy(x), quiet(x))


def test_rnn_init_noise_gives_the_first_recurrent_step_batch_variance():
    # The failure it fixes (Cooijmans et al., Sec. 5.1): h_0 = 0 makes W_h h_0 constant over the batch, a zero
    # variance that BN divides by sqrt(eps); at inference any lag of the running mean is then amplified 316-fold.
    torch.manual_seed(3)
    x = torch.rand(32, 1, 6, 6)
    for noise, zero in ((0.0, True), (0.1, False)):
        net = models.rnn((1, 6, 6), 3, hidden=4, norm="bn", cell="lstm", init_noise=noise, norm_kw={"momentum": 1.0})
        net.train()
        net(x)
        var0 = net[1].norm_h.running_var[0]  # momentum 1: the unbiased batch variance of step 0
        assert bool((var0 == 0).all()) is zero and bool((var0 > 0).all()) is not zero


def test_rnn_rejects_bad_cell_and_init_noise():
    with pytest.raises(ValueError, match=r"rnn: cell='gru' is not allowed; expected one of \['tanh', 'lstm'\]"):
        models.rnn((5, 3), 4, cell="gru")
    with pytest.raises(ValueError, match=r"rnn: expected init_noise as a finite number >= 0, got -0.1"):
        models.rnn((5, 3), 4, init_noise=-0.1)


def test_recurrent_claim_runs_cooijmans_bn_lstm_with_h0_noise_in_every_arm():
    from normlab.lab.claims import recurrent

    cfg = recurrent.CLAIM.configs["tiny"]
    for arm in recurrent.ARMS:
        c = recurrent._config(arm, 0, cfg)
        cell = models.build_model(c.model, (1, 28, 28), 10, norm=c.norm, **c.model_args)[1]
        assert cell.cell == "lstm" and cell.init_noise == 0.1, arm
        # the paper's inference statistics: the mini-batch estimates averaged per time step (tools.recalibrate)
        assert c.probes["population"]["average"] == "batches" and c.probes["population"]["batch"] == c.batch_size
    assert "LSTM" in recurrent.CLAIM.measures and "0.1^2" in recurrent.CLAIM.measures
    # (the estimator itself: tests/tools/test_tools_recalibrate.py::test_time_step_statistics_batch_average_*)


# ------------------------------------------------------------------------------------- options the claims need


def test_mlp_widths_dropout_last_and_init_std():
    net = models.mlp((4,), 3, widths=[8, 6, 5], dropout=0.5, dropout_position="last", norm="bn")
    assert _kinds(net) == (["Linear", "BatchNorm", "ReLU"] * 2 + ["Linear", "BatchNorm", "ReLU", "Dropout", "Linear"])
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [8, 6, 5, 3]
    torch.manual_seed(0)
    big = models.mlp((400,), 10, widths=[500], init="normal", init_std=0.3, norm="none")
    assert abs(big[1].weight.std().item() / 0.3 - 1) < 0.03 and big[1].bias.abs().max() == 0
    assert abs(big[4].weight.std().item() / 0.3 - 1) < 0.1  # the classifier too (5,000 values)
    for bad, match in (({"widths": []}, "widths as a non-empty list"), ({"widths": [4, 0]}, "widths as a non-empty"),
                       ({"init_std": 0.0}, "init_std as a finite number > 0"),
                       ({"noise_scale": -1.0}, "noise_scale as a finite number >= 0")):
        with pytest.raises(ValueError, match=f"mlp: expected {match}"):
            models.mlp((4,), 3, **bad)


def test_ioffe_mlp_paper_init_is_normal_std_0_1():
    torch.manual_seed(3)
    net = models.build_model("ioffe_mlp", (1, 28, 28), 10, norm="bn", init="normal", init_std=0.1)
    w = torch.cat([m.weight.flatten() for m in net if isinstance(m, nn.Linear)])
    assert abs(w.std().item() / 0.1 - 1) < 0.02 and abs(w.mean().item()) < 0.002


def test_noisy_norm_is_santurkar_per_unit_scale_and_shift_in_training_only():
    torch.manual_seed(0)
    net = models.mlp((6,), 2, widths=[50], norm="bn", noise_shift=0.5, noise_scale=0.25)
    block = net[2]
    assert isinstance(block, nn.Sequential) and isinstance(block[1], models.NormNoise)
    x = torch.randn(40, 6)
    y = block[0](net[1](x)).detach()  # BN output (batch statistics; gamma 1, beta 0)
    z = block(net[1](x)).detach()
    s = (z - z.mean(0)) / (y - y.mean(0))  # per-unit scale, the same for every example
    m = z.mean(0) - s.mean(0) * y.mean(0)
    assert torch.allclose(s, s[0].expand_as(s), atol=1e-4)
    assert ((s[0] >= 0.75) & (s[0] <= 1.25)).all() and ((m >= -0.5) & (m <= 0.5)).all()
    assert s[0].std() > 0.05  # drawn per unit
    z2 = block(net[1](x)).detach()
    assert not torch.allclose(z, z2)  # drawn again at every forward
    net.eval()
    torch.testing.assert_close(block(net[1](x)), block[0](net[1](x)))


def test_cnn_full_resolution_head_pool_and_conv_bias():
    net = models.cnn((1, 12, 12), 10, channels=(4, 6), pool="none", head_pool=4, conv_bias=False)
    assert "MaxPool2d" not in _kinds(net)
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    assert net[-1].in_features == 6 * 16 and net(torch.rand(3, 1, 12, 12)).shape == (3, 10)
    assert all(c.bias is not None for c in models.cnn((1, 8, 8), 10) if isinstance(c, nn.Conv2d))
    with pytest.raises(ValueError, match=r"cnn: pool='avg' is not allowed; expected one of \['max', 'none'\]"):
        models.cnn((1, 8, 8), 10, pool="avg")
    with pytest.raises(ValueError, match="cnn: expected head_pool as an int >= 1, got 0"):
        models.cnn((1, 8, 8), 10, head_pool=0)


def test_norm_available():
    assert models.norm_available("bn") is None and models.norm_available("none") is None


# ------------------------------------------------------------------------------- weight norm, alpha dropout, RAN/FN


def _wn_layers(model: nn.Module) -> list[nn.Module]:
    from torch.nn.utils import parametrize

    return [m for m in model.modules() if parametrize.is_parametrized(m, "weight")]


@pytest.mark.parametrize("name, shape, kw", [("mlp", (1, 8, 8), {"depth": 3, "width": 16}),
                                             ("cnn", (1, 8, 8), {"channels": (4, 6)})])
def test_weight_norm_arm_parametrizes_the_pre_norm_layers_and_has_no_norm_layer(name, shape, kw):
    from normlab.tools._common import is_norm

    torch.manual_seed(0)
    wn = models.build_model(name, shape, 10, norm="wn", init="he", **kw)
    torch.manual_seed(0)
    plain = models.build_model(name, shape, 10, norm="none", init="he", **kw)
    layers = _wn_layers(wn)
    assert len(layers) == (3 if name == "mlp" else 2)  # every hidden layer; the classifier is left alone
    assert list(wn.modules())[-1] not in layers
    assert not any(is_norm(m) for m in wn.modules())
    for layer in layers:
        p = layer.parametrizations.weight
        g, v = p.original0, p.original1
        # w = g v / ||v|| with the norm over all dims but the output one (Salimans & Kingma 2016, Eq. 2)
        w64 = g.double() * v.double() / v.double().flatten(1).norm(dim=1).view(-1, *[1] * (v.dim() - 1))
        torch.testing.assert_close(layer.weight.double(), w64)
    # at init the reparametrized weights equal the unparametrized model's (same seed, same init)
    x = torch.randn(5, *shape)
    torch.testing.assert_close(wn.eval()(x), plain.eval()(x), rtol=1e-5, atol=1e-6)
    # g and v are what the optimizer sees: a gradient reaches both
    wn.train()(x).sum().backward()
    assert all(layer.parametrizations.weight.original0.grad is not None for layer in layers)


def test_weight_norm_rejected_where_it_has_no_meaning():
    with pytest.raises(ValueError, match="norm='wn' has no norm layer"):
        models.build_model("mlp", (1, 8, 8), 10, norm="wn", noise_shift=0.1)
    assert models.norm_available("wn") is None


@pytest.mark.parametrize("name, cls", [("mlp", nn.AlphaDropout), ("cnn", nn.FeatureAlphaDropout)])
def test_alpha_dropout_kind_uses_torch_alpha_dropout(name, cls):
    m = models.build_model(name, (1, 8, 8), 10, norm="bn", dropout=0.2, dropout_kind="alpha")
    drops = [d for d in m.modules() if isinstance(d, (nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
                                                        nn.FeatureAlphaDropout))]
    assert drops and all(type(d) is cls and d.p == 0.2 for d in drops)
    std = models.build_model(name, (1, 8, 8), 10, norm="bn", dropout=0.2)
    assert not any(isinstance(d, (nn.AlphaDropout, nn.FeatureAlphaDropout)) for d in std.modules())
    with pytest.raises(ValueError, match="dropout_kind='gauss' is not allowed"):
        models.build_model(name, (1, 8, 8), 10, dropout=0.2, dropout_kind="gauss")


def test_alpha_dropout_keeps_mean_and_variance_of_standard_normal_input():
    # Klambauer et al. 2017, Sec. "New Dropout Technique": mean 0 and variance 1 are kept (standard dropout's
    # variance grows by 1/(1-p)); a 200k-sample check, fixed seed.
    torch.manual_seed(0)
    x = torch.randn(200_000)
    a = nn.AlphaDropout(0.3).train()(x)
    d = nn.Dropout(0.3).train()(x)
    assert abs(a.mean().item()) < 0.01 and abs(a.var().item() - 1) < 0.02
    assert d.var().item() > 1.3


@pytest.mark.parametrize("norm", ["ran", "fn"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_builders_accept_running_average_and_full_normalization(name, norm):
    from normlab.nn import make_norm

    torch.manual_seed(0)
    m = models.build_model(name, (1, 8, 8), 10, norm=norm)
    kind = type(make_norm(norm, 4))
    assert sum(isinstance(x, kind) for x in m.modules()) == (2 if name == "cnn" else 4)
    out = m.train()(torch.randn(6, 1, 8, 8))
    out.sum().backward()
    assert out.shape == (6, 10) and torch.isfinite(out).all()


def test_norm_position_after_puts_the_norm_after_the_activation():
    before = models.build_model("mlp", (1, 8, 8), 10, norm="bn", depth=2, width=8)
    after = models.build_model("mlp", (1, 8, 8), 10, norm="bn", depth=2, width=8, norm_position="after")
    assert _kinds(before) == ["Linear", "BatchNorm", "ReLU"] * 2 + ["Linear"]
    assert _kinds(after) == ["Linear", "ReLU", "BatchNorm"] * 2 + ["Linear"]
    with pytest.raises(ValueError, match="norm_position='middle' is not allowed"):
        models.build_model("mlp", (1, 8, 8), 10, norm_position="middle")
