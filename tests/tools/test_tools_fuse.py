"""normlab.tools.fuse_norm_act: fused models equal the unfused ones (outputs, gradients, running statistics) in
float64, train and eval, on both kernel paths, and the fused NormAct equals the float64 reference; state_dicts load
both ways; every refusal has its reason and leaves the model unchanged."""

import io

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from normlab import kernels
from normlab import nn as nlnn
from normlab import reference as ref
from normlab.tools import FuseReport, fuse_norm_act, plan_fuse_norm_act


# -- models ------------------------------------------------------------------------------------------------------
class FunctionalBlock(nn.Module):
    """conv -> BN -> F.relu / torch.relu / .relu() / F.leaky_relu in forward code (the fx path)."""

    def __init__(self, how: str = "F.relu", c: int = 4):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        h = self.bn(self.conv(x))
        if self.how == "F.relu":
            h = F.relu(h)
        elif self.how == "torch.relu":
            h = torch.relu(h)
        elif self.how == "method":
            h = h.relu()
        elif self.how == "F.relu_inplace":
            h = F.relu(h, inplace=True)
        else:
            h = F.leaky_relu(h, 0.2)
        return self.head(h)


class SharedReLU(nn.Module):
    """One ReLU module called after two BNs (torchvision's style): the calls are removed from the forward."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nlnn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class Wrapper(nn.Module):
    """A functional activation in a child block's forward: only the child is rewritten."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block = FunctionalBlock("torch.relu")

    def forward(self, x):
        return self.block(self.stem(x)[:, :3])


class BlockOut(nn.Module):
    """A functional pair inside, and a BN output returned for the parent's activation module."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class OuterAct(nn.Module):
    """bn2 lives in the rewritten block, its ReLU module in the parent: NormAct inside the GraphModule, Identity
    outside."""

    def __init__(self):
        super().__init__()
        self.block, self.relu, self.head = BlockOut(), nn.ReLU(), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.relu(self.block(x)))


class ReachesIn(nn.Module):
    """The parent calls a module inside the block whose forward would be rewritten (a GraphModule drops it)."""

    def __init__(self):
        super().__init__()
        self.block = FunctionalBlock("F.relu")
        self.block.extra = nn.Identity()

    def forward(self, x):
        return self.block(self.block.extra(x))


def cnn_torch():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3),
                         nn.BatchNorm2d(5), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def cnn_normlab_leaky():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nlnn.BatchNorm2d(4), nn.LeakyReLU(0.2), nn.Conv2d(4, 5, 3),
                         nlnn.BatchNorm(5), nn.LeakyReLU(), nn.Flatten())


def mlp_bn1d():
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nlnn.BatchNorm1d(8),
                         nn.ReLU(), nn.Linear(8, 3))


def plain_bns():
    """torch BNs without affine parameters or without running statistics."""
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8, affine=False), nn.ReLU(), nn.Linear(8, 8),
                         nn.BatchNorm1d(8, track_running_stats=False), nn.LeakyReLU(0.1), nn.Linear(8, 3))


def cnn3d():
    return nn.Sequential(nn.Conv3d(3, 4, 2), nn.BatchNorm3d(4, momentum=None), nn.ReLU(), nn.Flatten())


class Untraceable(nn.Module):
    """Data-dependent control flow at the top: fx fails, the Sequential inside is planned by order."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        if x.sum() > 1e9:  # never true here; fx cannot trace a branch on a tensor
            return x
        return self.body(x)


class ResidualBlock(nn.Module):
    """He et al. (2016) basic block: conv-BN-ReLU-conv-BN, + shortcut (identity, or 1x1 conv-BN when ``down``),
    then the activation, written the lab's way (``torch.relu(h + s)``), torchvision's (``out += s;
    self.relu(out)``, one ReLU module called twice) or with a LeakyReLU call."""

    def __init__(self, how: str = "lab", down: bool = False, c: int = 4):
        super().__init__()
        self.how = how
        c_out = 2 * c if down else c
        self.conv1, self.bn1 = nn.Conv2d(c, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nlnn.BatchNorm2d(c_out)
        self.shortcut = (nn.Sequential(nn.Conv2d(c, c_out, 1, bias=False), nn.BatchNorm2d(c_out)) if down
                         else nn.Identity())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        if self.how == "lab":
            return torch.relu(h + self.shortcut(x))
        if self.how == "torchvision":
            h += self.shortcut(x)
            return self.relu(h)
        return F.leaky_relu(self.shortcut(x) + h, 0.1)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.blocks = nn.Sequential(ResidualBlock("lab"), ResidualBlock("torchvision", down=True, c=4),
                                    ResidualBlock("leaky", c=8))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


MODELS = {
    "torch_cnn": (cnn_torch, (3, 8, 8)),
    "normlab_leaky": (cnn_normlab_leaky, (3, 6, 6)),
    "mlp_bn1d": (mlp_bn1d, (6,)),
    "bn3d": (cnn3d, (3, 4, 4, 4)),
    "plain_bns": (plain_bns, (6,)),
    "F.relu": (lambda: FunctionalBlock("F.relu"), (3, 6, 6)),
    "torch.relu": (lambda: FunctionalBlock("torch.relu"), (3, 6, 6)),
    "method": (lambda: FunctionalBlock("method"), (3, 6, 6)),
    "F.relu_inplace": (lambda: FunctionalBlock("F.relu_inplace"), (3, 6, 6)),
    "F.leaky_relu": (lambda: FunctionalBlock("F.leaky_relu"), (3, 6, 6)),
    "shared_relu": (SharedReLU, (3, 6, 6)),
    "wrapper": (Wrapper, (3, 6, 6)),
    "outer_act": (OuterAct, (3, 6, 6)),
    "untraceable": (Untraceable, (3, 6, 6)),
    "residual_lab": (lambda: ResidualBlock("lab"), (4, 5, 5)),
    "residual_torchvision_down": (lambda: ResidualBlock("torchvision", down=True), (4, 5, 5)),
    "residual_leaky": (lambda: ResidualBlock("leaky"), (4, 5, 5)),
    "tiny_resnet": (TinyResNet, (3, 6, 6)),
}
EXPECTED_FUSED = {"torch_cnn": 2, "normlab_leaky": 2, "mlp_bn1d": 2, "bn3d": 1, "plain_bns": 2, "F.relu": 1,
                  "torch.relu": 1, "method": 1, "F.relu_inplace": 1, "F.leaky_relu": 1, "shared_relu": 2, "wrapper": 2,
                  "outer_act": 2, "untraceable": 1,
                  "residual_lab": 2, "residual_torchvision_down": 2, "residual_leaky": 2, "tiny_resnet": 7}


def randomize(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 2 + 0.2)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nlnn.BatchNormBase)) and m.weight is not None:
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
    return model


def build(name, seed=0):
    torch.manual_seed(seed)
    make, shape = MODELS[name]
    return randomize(make(), seed).double(), shape


def state_copy(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-12, msg=k)


def fused_count(model):
    return sum(isinstance(m, nlnn.NormAct) for m in model.modules())


@pytest.fixture(params=["fast", "native"])
def kernel_path(request):
    if request.param == "fast" and not kernels.numba_available():
        pytest.skip("numba is not installed: no fast path to test")
    with kernels.backend(request.param):
        yield request.param


# -- equality with the unfused model -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_fuse_equal_to_unfused_train_steps_and_eval(name, kernel_path):
    model, shape = build(name)
    fused = fuse_norm_act(model)
    assert fused_count(fused) == EXPECTED_FUSED[name]
    assert fused_count(model) == 0  # the default fuses a copy
    opt_a = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(fused.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for _step in range(3):
        x = (torch.randn((16,) + shape, generator=gen, dtype=torch.float64) * 2 + 0.5)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = model(xa), fused(xb)
        torch.testing.assert_close(yb, ya, rtol=1e-10, atol=1e-10)
        w = torch.randn(ya.shape, generator=gen, dtype=torch.float64)
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-9, atol=1e-10)
        grads_a = {k: p.grad for k, p in model.named_parameters()}
        grads_b = {k.replace(".norm.", "."): p.grad for k, p in fused.named_parameters()}
        assert grads_a.keys() == grads_b.keys()
        for k in grads_a:
            torch.testing.assert_close(grads_b[k], grads_a[k], rtol=1e-9, atol=1e-10, msg=k)
        opt_a.step(), opt_b.step()
        opt_a.zero_grad(), opt_b.zero_grad()
    assert_state_equal(fused.state_dict(), model.state_dict())  # running statistics and counters included
    model.eval(), fused.eval()
    x = torch.randn((5,) + shape, generator=gen, dtype=torch.float64, requires_grad=True)
    xb = x.detach().clone().requires_grad_()
    ya, yb = model(x), fused(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-10, atol=1e-10)
    ya.sum().backward(), yb.sum().backward()
    torch.testing.assert_close(xb.grad, x.grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("activation,slope", [("relu", 0.0), ("leaky_relu", 0.2), ("leaky_relu", 0.0)])
@pytest.mark.parametrize("rank", [2, 4])
def test_fuse_norm_act_matches_float64_reference(activation, slope, rank, kernel_path):
    c = 5
    act = nn.ReLU() if activation == "relu" else nn.LeakyReLU(slope)
    model = nn.Sequential(nn.BatchNorm1d(c) if rank == 2 else nn.BatchNorm2d(c), act).double()
    randomize(model, 3)
    fused = fuse_norm_act(model)
    norm_act = fused[0]
    assert isinstance(norm_act, nlnn.NormAct) and norm_act.activation == activation
    gen = torch.Generator().manual_seed(2)
    shape = (12, c) if rank == 2 else (6, c, 3, 4)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 1
    gamma, beta = model[0].weight.detach().numpy().copy(), model[0].bias.detach().numpy().copy()
    xg = x.clone().requires_grad_()
    y = fused(xg)
    z, cache = ref.batch_norm_forward(x.numpy(), gamma, beta, eps=1e-5, axis=1)
    s = 0.0 if activation == "relu" else slope
    want = np.where(z > 0, z, s * z)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-10, atol=1e-12)
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    y.backward(dy)
    dz = np.where(z > 0, dy.numpy(), s * dy.numpy())
    dx, dgamma, dbeta = ref.batch_norm_backward(dz, cache)
    np.testing.assert_allclose(xg.grad.numpy(), dx, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(norm_act.norm.weight.grad.numpy(), dgamma, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(norm_act.norm.bias.grad.numpy(), dbeta, rtol=1e-8, atol=1e-10)
    # running statistics: torch's convention, unbiased variance
    m = x.numel() // c
    mean = cache.mean.reshape(-1)
    var = cache.var.reshape(-1) * m / (m - 1)
    np.testing.assert_allclose(norm_act.norm.running_mean.numpy(), 0.9 * model[0].running_mean.numpy() + 0.1 * mean,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(norm_act.norm.running_var.numpy(), 0.9 * model[0].running_var.numpy() + 0.1 * var,
                               rtol=1e-10, atol=1e-12)


def test_fuse_gradcheck_through_fused_module():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.LeakyReLU(0.3)).double()
    fused = fuse_norm_act(model)
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    with kernels.backend("native"):
        assert torch.autograd.gradcheck(lambda t: fused(t), (x,))


# -- state_dict --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["torch_cnn", "normlab_leaky", "shared_relu", "wrapper", "F.relu"])
def test_fuse_state_dict_loads_both_ways(name):
    model, shape = build(name, seed=4)
    fused = fuse_norm_act(model)
    assert list(fused.state_dict()) == list(model.state_dict())
    other, _ = build(name, seed=5)  # different values, same architecture
    other_fused = fuse_norm_act(other)
    other_fused.load_state_dict(model.state_dict(), strict=True)  # unfused -> fused
    assert_state_equal(other_fused.state_dict(), model.state_dict())
    other.load_state_dict(fused.state_dict(), strict=True)  # fused -> unfused
    assert_state_equal(other.state_dict(), model.state_dict())
    # the long names (the NormAct's own submodule) load too, and the fused model survives torch.save/load
    long_names = {}
    for key, value in model.state_dict().items():
        module_name, _, leaf = key.rpartition(".")
        is_fused = module_name and isinstance(fused.get_submodule(module_name), nlnn.NormAct)
        long_names[f"{module_name}.norm.{leaf}" if is_fused else key] = value
    other_fused.load_state_dict(long_names, strict=True)
    buf = io.BytesIO()
    torch.save(fused, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert list(again.state_dict()) == list(model.state_dict())


# -- refusals, each with its reason, and an unchanged model ------------------------------------------------------
class TwoUses(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        h = self.bn(x)
        return F.relu(h) + h


class InplaceTwoUses(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.bn(x)
        self.relu(h)  # overwrites h, which the return reads
        return h * 2


class RootFunctional(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x):
        return F.relu(self.bn(x))


class SlopeFromInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x):
        return F.leaky_relu(self.bn(x), x.shape[0] * 0.01)


def hooked_torch_bn():
    m = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU())
    m[0].register_forward_hook(lambda *a: None)
    return m


def hooked_relu():
    m = nn.Sequential(nlnn.BatchNorm2d(3), nn.ReLU())
    m[1].register_forward_hook(lambda *a: None)
    return m


def shared_bn():
    bn = nn.BatchNorm2d(3)
    return nn.Sequential(bn, nn.ReLU(), bn, nn.ReLU())


REFUSALS = {
    "used_elsewhere": (TwoUses, "also used by"),
    "inplace_semantics": (InplaceTwoUses, "in-place activation"),
    "gelu": (lambda: nn.Sequential(nn.BatchNorm2d(3), nn.GELU()), "followed by GELU, not ReLU/LeakyReLU"),
    "sigmoid_call": (lambda: nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Sigmoid()), "followed by Sigmoid"),
    "last_layer": (lambda: nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), "goes to the output"),
    "variant": (lambda: nn.Sequential(nlnn.BatchRenorm(3), nn.ReLU()), "BatchRenorm is not"),
    "torch_subclass": (lambda: nn.Sequential(nn.SyncBatchNorm(3), nn.ReLU()), "SyncBatchNorm is not"),
    "hooked_torch_bn": (hooked_torch_bn, "with hooks"),
    "hooked_relu": (hooked_relu, "has hooks"),
    "shared_bn": (shared_bn, "shared"),
    "slope_from_input": (SlopeFromInput, "not a constant"),
    "reaches_in": (ReachesIn, "'block.extra' inside it is used from"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_fuse_refusal_reasons_and_unchanged_model(name):
    make, reason = REFUSALS[name]
    model = make()
    before = state_copy(model)
    kinds = [type(m) for m in model.modules()]
    report = plan_fuse_norm_act(model)
    assert isinstance(report, FuseReport) and report.skipped and not report.fused, str(report)
    assert any(reason in why for _, why in report.skipped), str(report)
    assert reason in str(report)
    with pytest.raises(ValueError, match="strict=True"):
        fuse_norm_act(model, strict=True)
    fused = fuse_norm_act(model, inplace=True)  # nothing to fuse: the same model back, untouched
    assert fused is model and fused_count(model) == 0
    assert [type(m) for m in model.modules()] == kinds
    assert_state_equal(model.state_dict(), before)


def test_fuse_sequential_fallback_when_untraceable():
    report = plan_fuse_norm_act(Untraceable())
    assert report.untraced and report.untraced[0][0] == "" and report.fused == [("body.1", "body.2")]


def test_fuse_no_batch_norm_raises_and_bad_model_type():
    with pytest.raises(ValueError, match="no batch-norm layer"):
        fuse_norm_act(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        plan_fuse_norm_act("model")


def test_fuse_inplace_root_rewrite_refused_unchanged():
    model = RootFunctional()
    before = state_copy(model)
    with pytest.raises(ValueError, match="inplace=True.*own forward"):
        fuse_norm_act(model, inplace=True)
    assert type(model.bn) is nn.BatchNorm1d
    assert_state_equal(model.state_dict(), before)
    fused = fuse_norm_act(model)  # a copy: the whole model becomes a GraphModule of the same class name
    assert isinstance(fused, torch.fx.GraphModule) and type(fused).__name__ == "RootFunctional"
    assert isinstance(fused.bn, nlnn.NormAct)


def test_fuse_plan_changes_nothing_and_inplace_keeps_parameter_objects():
    model = cnn_torch()
    params = list(model.parameters())
    before = state_copy(model)
    plan_fuse_norm_act(model)
    assert all(type(m) is not nlnn.NormAct for m in model.modules())
    assert_state_equal(model.state_dict(), before)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out = fuse_norm_act(model, inplace=True)
    assert out is model and isinstance(model[1], nlnn.NormAct) and isinstance(model[2], nn.Identity)
    assert isinstance(model[1].norm, nlnn.BatchNorm2d)
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]  # the optimizer still holds them
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    opt.step()
    assert not torch.equal(model[1].norm.weight, before["1.weight"])


def test_fuse_rewrites_only_the_owner_of_a_functional_call():
    model = Wrapper()
    report = plan_fuse_norm_act(model)
    assert report.rewritten == ["block"]
    fused = fuse_norm_act(model)
    assert type(fused) is Wrapper and type(fused.stem) is nn.Sequential
    assert isinstance(fused.block, torch.fx.GraphModule) and type(fused.block).__name__ == "FunctionalBlock"


def test_fuse_eval_mode_model_stays_in_eval():
    model = cnn_torch().eval()
    fused = fuse_norm_act(model)
    assert not any(m.training for m in fused.modules())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fused(x), model(x))


def test_fuse_keeps_each_module_mode_in_rewritten_forwards():
    model = Wrapper().train()
    model.block.bn.eval()  # e.g. a frozen BN inside a training model
    model.stem[2].eval()
    fused = fuse_norm_act(model)
    assert fused.training and fused.block.training and not fused.block.bn.training and not fused.block.bn.norm.training
    assert not fused.stem[2].training and fused.stem[1].training
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(fused(x), model(x))


def _relu_ops(model, x):
    """Names of the separate ReLU operators (forward or backward) one training step of ``model`` runs."""
    from torch.profiler import ProfilerActivity, profile

    model(x).sum().backward()  # warm-up (numba compilation, buffer cache)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x).sum().backward()
    return sorted({e.name for e in prof.events() if "relu" in e.name.lower() or "threshold" in e.name.lower()})


def test_fuse_relu_runs_inside_the_kernel_pass_in_training():
    if not kernels.numba_available():
        pytest.skip("numba is not installed: no kernel pass")
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    x = torch.randn(4, 3, 8, 8)
    with kernels.backend("fast"):
        assert _relu_ops(model, x)  # the check can fail: the unfused model runs ReLU's operators
        assert _relu_ops(fuse_norm_act(model), x) == []


def test_fuse_twice_fuses_nothing_more():
    fused = fuse_norm_act(cnn_torch())
    report = plan_fuse_norm_act(fused)
    assert not report.fused and [r for _, r in report.skipped] == [
        "already fused: it is the norm of the NormAct '1'", "already fused: it is the norm of the NormAct '4'"]
    again = fuse_norm_act(fused)
    assert fused_count(again) == 2 and list(again.state_dict()) == list(fused.state_dict())


def test_fuse_bn_in_rewritten_block_with_activation_module_outside():
    report = plan_fuse_norm_act(OuterAct())
    assert report.rewritten == ["block"] and report.fused == [("block.bn1", "relu() in block"), ("block.bn2", "relu")]
    fused = fuse_norm_act(OuterAct())
    assert isinstance(fused.relu, nn.Identity) and isinstance(fused.block.bn2, nlnn.NormAct)


# -- the residual pattern: BN -> add(shortcut) -> ReLU/LeakyReLU -------------------------------------------------
def residual_count(model):
    return sum(isinstance(m, nlnn.act.NormAddAct) for m in model.modules())


@pytest.mark.parametrize("name,pairs", [("residual_lab", 1), ("residual_torchvision_down", 1), ("residual_leaky", 1),
                                        ("tiny_resnet", 3)])
def test_fuse_residual_pattern_report_and_state_dict(name, pairs):
    model, shape = build(name)
    report = plan_fuse_norm_act(model)
    assert sum("+ residual" in what for _, what in report.fused) == pairs, str(report)
    fused = fuse_norm_act(model)
    assert residual_count(fused) == pairs
    assert list(fused.state_dict()) == list(model.state_dict())
    other, _ = build(name, seed=7)
    other_fused = fuse_norm_act(other)
    other_fused.load_state_dict(model.state_dict(), strict=True)  # unfused -> fused
    assert_state_equal(other_fused.state_dict(), model.state_dict())
    other.load_state_dict(fused.state_dict(), strict=True)  # fused -> unfused
    assert_state_equal(other.state_dict(), model.state_dict())


def test_fuse_residual_downsampling_shortcut_bn_is_skipped_with_reason():
    report = plan_fuse_norm_act(ResidualBlock("torchvision", down=True))
    skipped = dict(report.skipped)
    assert "shortcut.1" in skipped and "fused with 'bn2'" in skipped["shortcut.1"], str(report)


def test_fuse_residual_lab_resnet20_fuses_every_bn_but_the_shortcut_ones():
    from normlab.bench.models import build_variants

    fused = build_variants("resnet20", size={"widths": (2, 2, 4)})["fused"]
    norms = sum(nlnn.act.NormAct in type(m).__mro__ for m in fused.modules())
    assert residual_count(fused) == 9 and norms == 19  # 21 BNs: 2 downsampling shortcuts stay alone


def test_fuse_residual_gradcheck_through_fused_block(kernel_path):
    model = ResidualBlock("lab", c=2).double()
    randomize(model, 2)
    fused = fuse_norm_act(model)
    assert residual_count(fused) == 1
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fused(t), (x,))


class ResidualRefusal(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.bn = nn.BatchNorm2d(3)
        self.bn_b = nn.BatchNorm2d(3)

    def forward(self, x):
        h = self.bn(x)
        if self.how == "constant":
            return torch.relu(h + 1.0)
        if self.how == "sum_reused":
            s = h + x
            return torch.relu(s) + s
        if self.how == "negative_slope":
            return F.leaky_relu(h + x, -0.2)
        if self.how == "gelu":
            return F.gelu(h + x)
        if self.how == "alpha":
            return torch.relu(torch.add(h, x, alpha=2.0))
        return torch.relu(h + self.bn_b(x))  # "two_bns": only one of them can own the add


@pytest.mark.parametrize("how,reason", [
    ("constant", "adds a constant (1.0)"),
    ("sum_reused", "whose sum is used by more than an activation"),
    ("negative_slope", "negative slope (-0.2)"),
    ("gelu", "not followed by ReLU/LeakyReLU"),
    ("alpha", "has other arguments"),
])
def test_fuse_residual_refusals_with_reason(how, reason):
    model = ResidualRefusal(how)
    report = plan_fuse_norm_act(model)
    assert any(name == "bn" and reason in why for name, why in report.skipped), str(report)
    fused = fuse_norm_act(model)
    assert residual_count(fused) == 0


def test_fuse_residual_two_bn_summands_one_fuses():
    model = randomize(ResidualRefusal("two_bns")).double()
    report = plan_fuse_norm_act(model)
    assert [n for n, _ in report.fused] == ["bn"] and dict(report.skipped)["bn_b"].startswith("the residual add"), \
        str(report)
    fused = fuse_norm_act(model)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-10, atol=1e-12)


def test_norm_add_act_other_residual_shapes_take_the_unfused_path(kernel_path):
    m = nlnn.act.NormAddAct(nlnn.BatchNorm2d(3)).double()
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    r = torch.randn(3, 1, 1, dtype=torch.float64)  # broadcasts: the unfused computation, as the original model
    ref_bn = nlnn.BatchNorm2d(3).double()
    torch.testing.assert_close(m(x, r), torch.relu(ref_bn(x) + r), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="negative_slope must be >= 0"):
        nlnn.act.NormAddAct(nlnn.BatchNorm2d(3), activation="leaky_relu", negative_slope=-1.0)
    with pytest.raises(ValueError, match="activation must be one of"):
        nlnn.act.NormAddAct(nlnn.BatchNorm2d(3), activation="elu")
