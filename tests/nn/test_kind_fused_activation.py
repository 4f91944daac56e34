"""Issue 16, item 3 (kind: the activation fused into the kernels' training pass). ``NormAct(BatchNorm, "relu")``
runs statistics, normalize and ReLU in one kernel pass forward and one backward (``kernels.batch_norm_train(act=
"relu")``) whenever the dispatch sends the norm's batch-statistic call to the kernels; everywhere else it runs
``relu(norm(x))``. Either way the outputs, the input and parameter gradients, the running statistics and the
counter equal the unfused BN -> ReLU (torch's and normlab.reference's, in float64), derivatives of every order stay
exact, torch.func transforms take the pure-torch path, and the fused path is taken exactly where it should be."""

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, jacrev, vmap

from normlab import kernels
from normlab import reference as ref
from normlab.nn import BatchNorm, BatchNorm1d, BatchNorm2d, GhostBatchNorm, NormAct
from normlab.nn import act as act_module

HAVE_NUMBA = kernels.numba_available()
BACKENDS = ["native", "auto"] + (["fast"] if HAVE_NUMBA else [])
SMALL = (4, 3, 5, 5)  # below kernels.AUTO_MIN_NUMEL: "auto" keeps it native
LARGE = (8, 4, 128, 128)  # 524 288 values, at kernels.AUTO_MIN_NUMEL: "auto" sends it to the kernels
assert np.prod(SMALL) < kernels.AUTO_MIN_NUMEL <= np.prod(LARGE)


@pytest.fixture
def fused_calls(monkeypatch):
    """The ``act`` of every kernels.batch_norm_train call with a fused activation (NormAct's fused path), in order;
    the norm's own calls (functional.batch_norm, no activation) are not recorded."""
    seen: list[str] = []
    real = kernels.batch_norm_train

    def spy(*args, **kwargs):
        if kwargs.get("act", "identity") != "identity":
            seen.append(kwargs["act"])
        return real(*args, **kwargs)

    monkeypatch.setattr(act_module.kernels, "batch_norm_train", spy)
    return seen


def _expect_fused(backend: str, x: torch.Tensor) -> bool:
    return backend == "fast" or (backend == "auto" and HAVE_NUMBA and x.numel() >= kernels.AUTO_MIN_NUMEL)


def _models(C, momentum=0.3, **kw):
    torch.manual_seed(1)
    theirs = torch.nn.BatchNorm2d(C, momentum=momentum, **kw).double()
    ours = NormAct(BatchNorm2d(C, momentum=momentum, **kw), activation="relu").double()
    if theirs.weight is not None:
        with torch.no_grad():
            w = torch.linspace(-1.5, 2.0, C, dtype=torch.float64)
            theirs.weight.copy_(w), theirs.bias.copy_(torch.linspace(0.3, -0.4, C, dtype=torch.float64))
    ours.load_state_dict({"norm." + k: v for k, v in theirs.state_dict().items()})
    return theirs, ours


def _reference_step(x, gamma, beta, dy, running_mean, running_var, momentum, eps=1e-5):
    """relu(BN(x)) forward, its gradients and the running update, in float64 from normlab.reference."""
    z, cache = ref.batch_norm_forward(x, gamma, beta, eps)
    y = np.maximum(z, 0)
    dz = dy * (z > 0)
    dx, dgamma, dbeta = ref.batch_norm_backward(dz, cache)
    m = x.size // x.shape[1]
    rm = ref.running_update(running_mean, cache.mean.reshape(-1), momentum)
    rv = ref.running_update(running_var, cache.var.reshape(-1) * m / (m - 1), momentum)
    return y, dx, dgamma, dbeta, rm, rv


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["below-auto", "above-auto"])
def test_kind_fused_activation_matches_torch_and_reference_train_then_eval(shape, backend, fused_calls):
    theirs, ours = _models(shape[1])
    rm, rv = theirs.running_mean.numpy().copy(), theirs.running_var.numpy().copy()
    with kernels.backend(backend):
        for step in range(3):
            x = torch.randn(*shape, dtype=torch.float64) * 2 + step
            dy = torch.randn(*shape, dtype=torch.float64)
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = torch.relu(theirs(xa)), ours(xb)
            ya.backward(dy), yb.backward(dy)
            y_ref, dx_ref, dg_ref, db_ref, rm, rv = _reference_step(
                x.numpy(), theirs.weight.detach().numpy(), theirs.bias.detach().numpy(), dy.numpy(), rm, rv, 0.3)
            torch.testing.assert_close(yb, ya, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(yb.detach().numpy(), y_ref, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(xb.grad.numpy(), dx_ref, rtol=1e-8, atol=1e-10)
            for p, q, r in ((ours.norm.weight, theirs.weight, dg_ref), (ours.norm.bias, theirs.bias, db_ref)):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-10)
                np.testing.assert_allclose(p.grad.numpy(), r, rtol=1e-8, atol=1e-9)
            ours.zero_grad(), theirs.zero_grad()
            for name in ("running_mean", "running_var"):
                torch.testing.assert_close(getattr(ours.norm, name), getattr(theirs, name), rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(ours.norm.running_mean.numpy(), rm, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(ours.norm.running_var.numpy(), rv, rtol=1e-10, atol=1e-12)
            assert int(ours.norm.num_batches_tracked) == int(theirs.num_batches_tracked) == step + 1
        assert fused_calls == (["relu"] * 3 if _expect_fused(backend, x) else [])
        ours.eval(), theirs.eval()
        x = torch.randn(*shape, dtype=torch.float64)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = torch.relu(theirs(xa)), ours(xb)
        torch.testing.assert_close(yb, ya, rtol=1e-12, atol=1e-12)
        dy = torch.randn_like(ya)
        ya.backward(dy), yb.backward(dy)
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.norm.weight.grad, theirs.weight.grad, rtol=1e-10, atol=1e-10)
        assert int(ours.norm.num_batches_tracked) == 3 and len(fused_calls) == (3 if _expect_fused(backend, x) else 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [{"momentum": None}, {"affine": False}, {"track_running_stats": False}],
                         ids=["cumulative", "no-affine", "no-running-stats"])
def test_kind_fused_activation_layer_options_match_torch(kw, backend, fused_calls):
    momentum = kw.pop("momentum", 0.3)
    theirs, ours = _models(3, momentum=momentum, **kw)
    with kernels.backend(backend):
        for step in range(3):
            x = torch.randn(*SMALL, dtype=torch.float64) + step
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = torch.relu(theirs(xa)), ours(xb)
            torch.testing.assert_close(yb, ya, rtol=1e-12, atol=1e-12)
            dy = torch.randn_like(ya)
            ya.backward(dy), yb.backward(dy)
            torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-10, atol=1e-12)
            for a, b in zip(ours.parameters(), theirs.parameters()):
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)
        for (k, a), b in zip(ours.norm.named_buffers(), theirs.buffers()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13, msg=k)
    assert fused_calls == (["relu"] * 3 if backend == "fast" else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last_2d", "nlc"])
def test_kind_fused_activation_channels_last_matches_unfused(layout, backend, fused_calls):
    if layout == "nlc":
        build = lambda: BatchNorm(5, axis=-1, momentum=0.2)  # noqa: E731
        x = torch.randn(6, 7, 5, dtype=torch.float64) * 3 - 1
    else:
        build = lambda: BatchNorm2d(5, momentum=0.2)  # noqa: E731
        x = (torch.randn(3, 5, 4, 4, dtype=torch.float64) * 3 - 1).to(memory_format=torch.channels_last)
    torch.manual_seed(2)
    unfused = build().double()
    with torch.no_grad():
        unfused.weight.uniform_(-1, 2), unfused.bias.uniform_(-0.5, 0.5)
    ours = NormAct(build(), activation="relu").double()
    ours.norm.load_state_dict(unfused.state_dict())
    with kernels.backend(backend):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        with kernels.backend("native"):
            ya = torch.relu(unfused(xa))  # the unfused composite, on torch's operators
        yb = ours(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(ya)
    ya.backward(dy), yb.backward(dy)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-10, atol=1e-12)
    for a, b in zip(ours.norm.parameters(), unfused.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)
    for a, b in zip(ours.norm.buffers(), unfused.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    assert fused_calls == (["relu"] if backend == "fast" else [])


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed: there is no fused path to step aside from")
@pytest.mark.parametrize("case", ["forward-pre-hook", "forward-hook", "variant", "extra-argument", "elu",
                                  "eval", "empty-batch", "synchronized"])
def test_kind_fused_activation_steps_aside_where_norm_call_is_more_than_the_kernel(case, fused_calls):
    """Hooks, variants, extra arguments, activations the kernels do not fuse, running statistics, empty batches and
    synchronized layers keep ``act(norm(x))``: same results, hooks run, no fused call."""
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    ran = []
    if case == "variant":
        layer = NormAct(GhostBatchNorm(3, virtual_batch_size=2), activation="relu").double()
    elif case == "elu":  # not fused by the kernels
        layer = NormAct(BatchNorm1d(3), activation="elu", alpha=0.7).double()
    else:
        layer = NormAct(BatchNorm1d(3), activation="relu").double()
    if case == "forward-pre-hook":
        layer.norm.register_forward_pre_hook(lambda m, a: ran.append("pre"))
    if case == "forward-hook":
        layer.norm.register_forward_hook(lambda m, a, out: ran.append("post"))
    if case == "eval":
        layer.eval()
    if case == "empty-batch":
        x = x[:0]
    if case == "synchronized":  # outside torch.distributed the pooling is over this process alone
        layer.norm.sync_statistics = True
    with kernels.backend("fast"):
        if case == "extra-argument":
            # BatchNorm takes no extra argument: NormAct passes it on, and the norm's own error reaches the caller
            with pytest.raises(TypeError):
                layer(x, torch.ones(4, 1, 5, dtype=torch.bool))
            assert fused_calls == []
            return
        y = layer(x)
    assert fused_calls == []
    assert ran == {"forward-pre-hook": ["pre"], "forward-hook": ["post"]}.get(case, [])
    with kernels.backend("native"):
        want = layer.norm(x)
    want = torch.nn.functional.elu(want, 0.7) if case == "elu" else torch.relu(want)
    torch.testing.assert_close(y, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kind_fused_activation_third_derivative_exact(backend, fused_calls):
    """create_graph=True through the fused op differentiates its composite: the third directional derivative equals
    the one of an independent pure-torch relu(BN(x)) (exact by autograd through elementary operators)."""
    torch.manual_seed(4)
    layer = NormAct(BatchNorm1d(3), activation="relu").double()
    with torch.no_grad():
        layer.norm.weight.copy_(torch.tensor([1.2, -0.8, 0.5])), layer.norm.bias.copy_(torch.tensor([0.2, 0.1, -0.3]))
    w, b = layer.norm.weight.detach(), layer.norm.bias.detach()

    def composite(t):
        mu = t.mean(dim=(0, 2), keepdim=True)
        var = (t - mu).square().mean(dim=(0, 2), keepdim=True)
        return torch.relu((t - mu) / torch.sqrt(var + 1e-5) * w[:, None] + b[:, None])

    x = torch.randn(6, 3, 4, dtype=torch.float64) + 0.5
    g = torch.Generator().manual_seed(5)
    c, u, v, d = (torch.randn(x.shape, generator=g, dtype=torch.float64) for _ in range(4))

    def third(f):
        xx = x.clone().requires_grad_()
        g1, = torch.autograd.grad((f(xx) ** 3 * c).sum(), xx, create_graph=True)
        g2, = torch.autograd.grad((g1 * u).sum(), xx, create_graph=True)
        g3, = torch.autograd.grad((g2 * v).sum(), xx)
        return float((g3 * d).sum())

    with kernels.backend(backend):
        got = third(layer)
    want = third(composite)
    assert abs(got - want) <= 1e-9 * max(1.0, abs(want)), (got, want)
    assert fused_calls == (["relu"] if backend == "fast" else [])
    x.requires_grad_()
    with kernels.backend(backend):
        assert torch.autograd.gradgradcheck(lambda t: layer(t), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_kind_fused_activation_functorch_transforms_take_pure_torch(backend, fused_calls):
    def fresh():
        return NormAct(BatchNorm2d(3, track_running_stats=False), activation="relu").double()

    x = torch.randn(4, 3, 2, 2, dtype=torch.float64) * 2 + 1
    xs = torch.randn(2, 4, 3, 2, 2, dtype=torch.float64)
    with kernels.backend(backend):
        want = torch.autograd.functional.jacobian(fresh(), x)
        before = len(fused_calls)
        torch.testing.assert_close(jacrev(fresh())(x), want)
        layer = fresh()
        params = dict(layer.named_parameters())
        got = grad(lambda p: functional_call(layer, p, (x,)).square().sum())(params)
        ref_layer = fresh()
        wanted = torch.autograd.grad(ref_layer(x).square().sum(), list(ref_layer.parameters()))
        for k, w in zip(params, wanted):
            torch.testing.assert_close(got[k], w)
        torch.testing.assert_close(vmap(fresh())(xs), torch.stack([fresh()(b) for b in xs]))
    # only the plain (untransformed) calls may fuse: jacobian's own forward and the references
    assert fused_calls.count("relu") == (before + 1 + 2 if backend == "fast" else 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("slope", [0.2, 0.0, -0.3])
def test_kind_fused_activation_leaky_relu_in_the_kernel_pass(slope, backend, fused_calls):
    """LeakyReLU is fused like ReLU (any slope, as torch allows): values, gradients and running statistics equal
    leaky_relu(BN(x)) with torch's layers."""
    torch.manual_seed(3)
    theirs = torch.nn.BatchNorm2d(4, momentum=0.3).double()
    with torch.no_grad():
        theirs.weight.uniform_(-1, 2), theirs.bias.uniform_(-0.5, 0.5)
    ours = NormAct(BatchNorm2d(4, momentum=0.3), activation="leaky_relu", negative_slope=slope).double()
    ours.norm.load_state_dict(theirs.state_dict())
    with kernels.backend(backend):
        for step in range(2):
            x = torch.randn(*LARGE[:1], 4, 9, 9, dtype=torch.float64) * 2 + step
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = torch.nn.functional.leaky_relu(theirs(xa), slope), ours(xb)
            torch.testing.assert_close(yb, ya, rtol=1e-12, atol=1e-12)
            dy = torch.randn_like(ya)
            ya.backward(dy), yb.backward(dy)
            torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-10, atol=1e-12)
            for a, b in zip(ours.norm.parameters(), theirs.parameters()):
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)
            for a, b in zip(ours.norm.buffers(), theirs.buffers()):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    assert fused_calls == (["leaky_relu"] * 2 if backend == "fast" else [])
