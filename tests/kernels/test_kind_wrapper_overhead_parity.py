"""Issue 16, item 2 (kind: wrapper overhead against torch). Where "auto" keeps torch's operator, the call must be
as thin as torch's own: the output hangs on torch's autograd node (no Python autograd Function in the graph, no
Python in the backward), while derivatives of every order stay exact (a post hook on that node, which steps in only
when a graph of the backward is requested) and the node keeps nothing alive longer than torch's would. And the
dispatch knows whether a backward can follow: a training forward without one decides from
``dispatch.AUTO_TABLE_FORWARD_ONLY`` (channels-last and rows: torch's operator). Decisions and graph structure
only, never timings."""

from __future__ import annotations

import gc
import os
import weakref

import numpy as np
import pytest
import torch

from normlab import functional as F
from normlab import kernels
from normlab import nn as nlnn
from normlab import reference as ref
from normlab.kernels import dispatch

needs_numba = pytest.mark.skipif(not kernels.numba_available(), reason="numba not installed")

TORCH_NODE = type(torch.nn.functional.batch_norm(torch.randn(4, 3, requires_grad=True), None, None, training=True)
                  .grad_fn)  # NativeBatchNormBackward0

SMALL = [  # (shape, channels_last): the small shapes of `normlab bench`, each below its row of AUTO_TABLE
    ((32, 128), False), ((256, 128), False), ((8, 512, 7, 7), False), ((8, 512, 7, 7), True),
    ((32, 256, 14, 14), True),
]


def _graph_nodes(y: torch.Tensor) -> list:
    seen, todo = [], [y.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or any(node is s for s in seen):
            continue
        seen.append(node)
        todo += [n for n, _ in node.next_functions]
    return seen


def _input(shape, cl, requires_grad=True):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(requires_grad)


@pytest.mark.parametrize("setting", ["auto", "native"])
@pytest.mark.parametrize("shape,cl", SMALL, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_small_training_call_hangs_on_torchs_own_node(setting, shape, cl):
    x = _input(shape, cl)
    C = shape[1]
    assert x.numel() < dispatch.AUTO_TABLE[dispatch.layout_of(x, 1)]  # "auto" keeps torch's operator here
    w, b = torch.rand(C, requires_grad=True), torch.randn(C, requires_grad=True)
    layer = (nlnn.BatchNorm1d if len(shape) == 2 else nlnn.BatchNorm2d)(C)
    with kernels.backend(setting):
        outs = [F.batch_norm(x, torch.zeros(C), torch.ones(C), w, b, training=True),
                F.batch_norm(x, None, None, w, b, training=True), layer(x)]
    for y in outs:
        assert type(y.grad_fn) is TORCH_NODE
        # nothing but torch's C++ nodes on the way back (a Python autograd Function's node is a BackwardCFunction)
        assert not any(isinstance(n, torch.autograd.function.BackwardCFunction) for n in _graph_nodes(y))
    assert int(layer.num_batches_tracked) == 1


@needs_numba
def test_fast_setting_still_takes_the_kernels_at_small_sizes():
    x = _input((32, 128), False)
    with kernels.backend("fast"):
        y = F.batch_norm(x, torch.zeros(128), torch.ones(128), training=True)
    assert type(y.grad_fn) is not TORCH_NODE


def test_sequence_layout_hangs_on_torchs_node_through_a_view():
    """(N, L, C) with axis=-1 runs as the operator's (N * L, C) view: a view node, then torch's."""
    x = torch.randn(4, 6, 5, requires_grad=True)
    with kernels.backend("native"):
        y = F.batch_norm(x, None, None, training=True, axis=-1)
    assert type(y.grad_fn.next_functions[0][0]) is TORCH_NODE
    y_ref, _ = ref.batch_norm_forward(x.detach().double().numpy(), axis=-1)
    np.testing.assert_allclose(y.detach().double().numpy(), y_ref, atol=1e-5)


def _third(f, x, seed=1):
    g = torch.Generator().manual_seed(seed)
    u, v, w = (torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(3))
    x = x.detach().clone().requires_grad_()
    g1, = torch.autograd.grad(f(x), x, create_graph=True)
    g2, = torch.autograd.grad((g1 * u).sum(), x, create_graph=True)
    g3, = torch.autograd.grad((g2 * v).sum(), x)
    return float((g3 * w).sum())


def _composite(t, w, b, eps=1e-5):
    m = t.mean(0, keepdim=True)
    return (t - m) / torch.sqrt(((t - m) ** 2).mean(0, keepdim=True) + eps) * w + b


@pytest.fixture
def hooks():
    return "posthook"  # the one way: a post hook on torch's node through the public Node.register_hook


@pytest.mark.parametrize("shifted", [False, True], ids=["plain", "shifted"])
def test_third_order_exact_through_the_hook_on_a_temporary_input(monkeypatch, hooks, shifted):
    """The hooks find the node's input, a temporary here (2 * t, freed after the forward: the fallback holds it
    weakly, the usual way reads it from the node), on the plain branch and on the redo on x - mean (forced in
    float64); twice on a retained graph gives the same."""
    if shifted:
        monkeypatch.setattr(kernels.native, "_SHIFT_DTYPES", (torch.float32, torch.float64))
        monkeypatch.setattr(kernels.native, "SHIFT_RATIO", -1.0)
    w = torch.rand(3, dtype=torch.float64) + 0.5
    b = torch.randn(3, dtype=torch.float64)
    c = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x = torch.randn(6, 3, dtype=torch.float64) * 2 + 1

    def ours(t):
        with kernels.backend("native"):
            return (F.batch_norm(2 * t, None, None, w, b, training=True) ** 3 * c).sum()

    def composite(t):
        return (_composite(2 * t, w, b) ** 3 * c).sum()

    want = _third(composite, x)
    assert _third(ours, x) == pytest.approx(want, rel=1e-9, abs=1e-9)
    t = x.clone().requires_grad_()
    with kernels.backend("native"):
        y = F.batch_norm(2 * t, None, None, w, b, training=True)
    g = torch.Generator().manual_seed(1)
    u, v = (torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(2))
    seconds = []
    for _ in range(2):  # create_graph twice over the same retained graph
        g1, = torch.autograd.grad((y ** 3 * c).sum(), t, create_graph=True)
        g2, = torch.autograd.grad((g1 * u).sum(), t, create_graph=True)
        seconds.append(torch.autograd.grad((g2 * v).sum(), t, retain_graph=True)[0])
    comp = torch.autograd.grad((torch.autograd.grad((torch.autograd.grad(composite(t), t, create_graph=True)[0] * u)
                                                    .sum(), t, create_graph=True)[0] * v).sum(), t)[0]
    for got in seconds:
        torch.testing.assert_close(got, comp, rtol=1e-9, atol=1e-9)


def test_users_hook_on_the_output_still_runs_once(hooks):
    """A hook the user adds on the output runs once, beside ours on the node, and its
    change to the gradient takes effect (as on any tensor)."""
    x = torch.randn(16, 4, requires_grad=True)
    with kernels.backend("native"):
        y = F.batch_norm(x, None, None, training=True)
    seen = []
    y.register_hook(lambda g: seen.append(1) or g * 2)
    dy = torch.randn(16, 4)
    got, = torch.autograd.grad(y, x, dy)
    want, = torch.autograd.grad(torch.nn.functional.batch_norm(x, None, None, training=True), x, 2 * dy)
    assert seen == [1]
    torch.testing.assert_close(got, want)


def test_the_hook_keeps_no_input_alive_after_the_backward(hooks):
    """torch's node frees its saved input after the backward; the graph object may live on (the output kept), and
    the hook must not keep the input with it (every layer's activations for one more step)."""
    x = torch.randn(64, 8, requires_grad=True)
    h = x * 2  # a temporary: after the forward only the node holds it
    probe = weakref.ref(h)
    with kernels.backend("native"):
        y = F.batch_norm(h, torch.zeros(8), torch.ones(8), training=True)
    del h
    gc.collect()
    assert probe() is not None  # saved by the node for its backward
    y.backward(torch.ones_like(y))
    gc.collect()
    assert y.grad_fn is not None and probe() is None


def test_first_order_gradients_are_torchs():
    x = _input((32, 16), False)
    w, b = torch.rand(16, requires_grad=True), torch.randn(16, requires_grad=True)
    dy = torch.randn(32, 16)
    with kernels.backend("native"):
        got = torch.autograd.grad(F.batch_norm(x, None, None, w, b, training=True), (x, w, b), dy)
    want = torch.autograd.grad(torch.nn.functional.batch_norm(x, None, None, w, b, training=True), (x, w, b), dy)
    for a, e in zip(got, want):
        assert torch.equal(a, e)


# --------------------------------------------------------------------------------- the grad-aware decision
def test_forward_only_table_is_declared_per_layout():
    assert set(dispatch.AUTO_TABLE_FORWARD_ONLY) == set(dispatch.AUTO_TABLE)
    for layout, least in dispatch.AUTO_TABLE_FORWARD_ONLY.items():
        with_backward = dispatch.AUTO_TABLE[layout]
        # a forward alone never takes the kernels below where a training step would
        assert least is None or (with_backward is not None and least >= with_backward), layout


def test_backward_follows():
    x, w, b = torch.randn(4, 3), torch.ones(3), torch.zeros(3)
    assert not dispatch.backward_follows(x, w, b)
    for t in (x, w, b):
        t.requires_grad_(True)
        assert dispatch.backward_follows(x, w, b)
        with torch.no_grad():
            assert not dispatch.backward_follows(x, w, b)
        t.requires_grad_(False)
    assert not dispatch.backward_follows(x, None, None)


@needs_numba
def test_auto_decides_from_the_table_of_whether_a_backward_follows(monkeypatch):
    monkeypatch.setitem(dispatch.AUTO_TABLE_FORWARD_ONLY, "channel_first", dispatch.AUTO_TABLE["channel_first"] * 2)
    cases = {
        "channel_first": torch.empty(4, 8, dispatch.AUTO_TABLE["channel_first"] // 32),
        "channels_last": torch.empty(4, dispatch.AUTO_TABLE["channels_last"] // 64, 4, 4)
        .contiguous(memory_format=torch.channels_last),
        "rows": torch.empty(dispatch.AUTO_TABLE["rows"] // 64, 64),
    }
    with kernels.backend("auto"):
        for layout, x in cases.items():
            assert dispatch.layout_of(x, 1) == layout and x.numel() == dispatch.AUTO_TABLE[layout]
            assert kernels.use_fast(x, 1) and kernels.use_fast(x, 1, backward=True), layout
            least = dispatch.AUTO_TABLE_FORWARD_ONLY[layout]
            assert kernels.use_fast(x, 1, backward=False) == (least is not None and x.numel() >= least), layout
            w = torch.ones(x.shape[1], requires_grad=True)
            assert dispatch.use_fast_train(x, 1, w, None) == kernels.use_fast(x, 1, backward=True)
            with torch.no_grad():
                assert dispatch.use_fast_train(x, 1, w, None) == kernels.use_fast(x, 1, backward=False)
    with kernels.backend("fast"):  # "fast" ignores both tables
        assert all(kernels.use_fast(x, 1, backward=False) for x in cases.values())


@needs_numba
@pytest.mark.parametrize("cl", [True, False], ids=["channels_last", "nchw"])
def test_training_forward_without_backward_follows_the_forward_only_table(monkeypatch, cl):
    """At the channels-last crossover size: a training forward under no_grad takes torch's operator (one call of
    torch.native_batch_norm), with a gradient wanted the kernels (no call); NCHW takes the kernels either way."""
    n = dispatch.AUTO_TABLE["channels_last"]
    shape = (n // (64 * 32 * 32), 64, 32, 32)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 3 + 1
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    calls = []
    real = torch.native_batch_norm

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(torch, "native_batch_norm", counting)
    layer = nlnn.BatchNorm2d(64)
    with kernels.backend("auto"):
        with torch.no_grad():
            y = layer(x)
        assert len(calls) == (1 if cl else 0)
        assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        y_ref, cache = ref.batch_norm_forward(x.double().numpy())
        np.testing.assert_allclose(y.double().numpy(), y_ref, rtol=1e-4, atol=1e-4)  # torch float32, 2^17 values a channel
        m = x.numel() // 64
        np.testing.assert_allclose(layer.running_mean.double().numpy(), 0.1 * cache.mean.reshape(-1), rtol=1e-5)
        np.testing.assert_allclose(layer.running_var.double().numpy(),
                                   0.9 + 0.1 * cache.var.reshape(-1) * m / (m - 1), rtol=1e-5)
        assert int(layer.num_batches_tracked) == 1
        calls.clear()
        y = layer(x.requires_grad_())
        assert len(calls) == 0 and type(y.grad_fn) is not TORCH_NODE


def test_environment_read_follows_a_replaced_os_environ(monkeypatch):
    """The setting is read from os.environ at each call, also when os.environ was replaced."""
    previous = dispatch._override
    dispatch.set_backend(None)
    try:
        monkeypatch.setattr(os, "environ", {dispatch.ENV_VAR: "native"})
        assert kernels.get_backend() == "native"
        os.environ[dispatch.ENV_VAR] = "auto"
        assert kernels.get_backend() == "auto"
    finally:
        monkeypatch.undo()
        dispatch._override = previous


@pytest.mark.parametrize("groups", [1, 2])
def test_fused_train_entry_follows_the_forward_only_table(monkeypatch, groups):
    """kernels.batch_norm_train (variants, NormAct) decides as the plain layer: a channels-last training forward
    under no_grad at the crossover size takes torch's operators, with a gradient wanted the kernels; the result equals
    the float64 reference either way."""
    n = dispatch.AUTO_TABLE["channels_last"]
    x = (torch.randn((n // (16 * 32 * 32), 16, 32, 32), generator=torch.Generator().manual_seed(3)) * 2 + 1)
    x = x.contiguous(memory_format=torch.channels_last)
    taken = []
    real = kernels._ops

    def spy():
        taken.append(1)
        return real()

    monkeypatch.setattr(kernels, "_ops", spy)
    w, b = torch.ones(16), torch.zeros(16)
    with kernels.backend("auto"):
        with torch.no_grad():
            y, stats = kernels.batch_norm_train(x, w, b, 1e-5, axis=1, groups=groups)
        assert taken == []
        y2, _ = kernels.batch_norm_train(x, w.requires_grad_(), b, 1e-5, axis=1, groups=groups)
        assert taken == [1]
    xs = x.double().numpy()
    if groups == 1:
        y_ref, _ = ref.batch_norm_forward(xs)
    else:
        y_ref = np.concatenate([ref.batch_norm_forward(part)[0] for part in np.split(xs, groups)])
    # float32 over 2^16-2^17 values per channel: torch's operator is accurate to ~1.5e-5 relative here
    np.testing.assert_allclose(y.double().numpy(), y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y2.detach().double().numpy(), y_ref, rtol=1e-4, atol=1e-4)
