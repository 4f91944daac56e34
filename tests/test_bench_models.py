"""`normlab bench --models` (normlab.bench.models) runs on tiny sizes and returns its structure (figures are never
asserted); its three variants are the same model; `normlab bench` says why the kernels are off without numba."""

from __future__ import annotations

import pytest
import torch

from normlab import kernels
from normlab.bench import harness
from normlab.bench import kernels as bench_kernels
from normlab.bench import models as bench_models
from normlab.bench.harness import Timing
from normlab.kernels import dispatch
from normlab.nn import BatchNorm2d, NormAct

TINY = {"cnn": {"channels": (4, 8)}, "resnet20": {"widths": (4, 8, 8), "blocks_per_stage": 1}, "mlp": {"width": 16}}


def test_bench_models_smoke_structure():
    cases = bench_models.run_models_bench(reps=1, warmup=0, batch=4, size=TINY, profile_steps=1)
    assert [c.name for c in cases] == ["cnn", "resnet20", "mlp"]
    # tiny ResNet: the stem's BN, each block's first BN, and each block's last BN with the residual add and ReLU
    # (NormAddAct) fuse; the two downsampling shortcuts' BNs feed the same add and stay apart
    assert [(c.fused_pairs, c.residual_pairs, c.norms) for c in cases] == [(2, 0, 2), (7, 3, 9), (3, 0, 3)]
    for c in cases:
        assert set(c.timings) == {*bench_models.VARIANTS, bench_models.FREE}
        assert all(t.reps == 1 for t in c.timings.values())
        assert set(c.bn_share) == set(bench_models.VARIANTS) and all(0 < s < 1 for s in c.bn_share.values())
        d = c.as_dict()
        assert d["batch"] == 4 and set(d["speedup_vs_torch"]) == {*bench_models.VARIANTS, bench_models.FREE}
        assert d["speedup_vs_torch"]["free"] == pytest.approx(c.ratio("free"))
        assert set(c.faults) == {*bench_models.VARIANTS, bench_models.FREE}
        assert all(n is None or n >= 0 for n in c.faults.values()) and d["page_faults_per_step"] == c.faults
    table = bench_models.format_models_table(cases)
    assert all(name in table for name in ("cnn", "resnet20", "mlp", "fused x", "free x", "BN% torch"))
    row = next(line for line in table.splitlines() if line.startswith("resnet20"))
    assert f"{cases[1].ratio('fused'):.2f} {cases[1].ratio('free'):>7.2f}" in row


@pytest.mark.parametrize("name", list(bench_models.MODELS))
def test_free_norms_leaves_no_norm_layer_and_keeps_the_rest(name):
    models = bench_models.build_variants(name, size=TINY[name])
    free = bench_models.free_norms(models["fused"])
    assert not any(isinstance(m, NormAct) or bench_models.is_batch_norm(m) for m in free.modules())
    assert any(isinstance(m, NormAct) for m in models["fused"].modules())  # a copy: the fused model is untouched
    fused_norms = [m for m in models["fused"].modules() if isinstance(m, NormAct)
                   or (bench_models.is_batch_norm(m) and not any(m is n.norm for n in models["fused"].modules()
                                                                 if isinstance(n, NormAct)))]
    assert sum(isinstance(m, bench_models._FreeNorm) for m in free.modules()) == len(fused_norms)
    x = torch.randn((3,) + bench_models.MODELS[name][2])
    free(x).sum().backward()  # trains: every remaining parameter gets a gradient
    assert all(p.grad is not None for p in free.parameters())


def test_free_norm_is_the_identity_plus_the_residual():
    free = bench_models._FreeNorm()
    x, r = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert free(x) is x
    torch.testing.assert_close(free(x, r), x + r)
    seq = bench_models.free_norms(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), NormAct(BatchNorm2d(3), activation="relu")))
    torch.testing.assert_close(seq(x), seq[0](x))  # BN and its fused ReLU both gone


@pytest.mark.parametrize("name", list(bench_models.MODELS))
def test_bench_models_variants_are_the_same_model(name):
    models = bench_models.build_variants(name, size=TINY[name])
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in models["normlab"].modules())
    assert all(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) or not bench_models.is_batch_norm(m)
               for m in models["torch"].modules())
    shape = bench_models.MODELS[name][2]
    x = torch.randn((6,) + shape)
    with kernels.backend("native"):
        want = models["torch"](x)
        for v in ("normlab", "fused"):
            torch.testing.assert_close(models[v](x), want, rtol=1e-4, atol=1e-5)


def test_bench_models_bad_input_one_line_exit_2(capsys):
    with pytest.raises(ValueError, match="unknown model 'vgg'; expected one of"):
        bench_models.run_models_bench(["vgg"])
    assert bench_models.main(["--models", "vgg", "--reps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["normlab bench --models: unknown model 'vgg'; expected one of ['cnn', 'resnet20', 'mlp']"]
    assert bench_models.main(["--reps", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "normlab bench --models: reps must be >= 1, got 0\n"


def test_bench_says_why_kernels_are_off_without_numba(monkeypatch):
    monkeypatch.setattr(dispatch, "_numba_available", False)
    monkeypatch.setattr(bench_kernels.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(bench_kernels, "NUMBA_WHEELS", {(__import__("sys").platform, "x86_64")})
    assert "numba is not installed" in bench_kernels.kernels_off_reason()
    monkeypatch.setattr(bench_kernels.platform, "machine", lambda: "ppc64le")
    reason = bench_kernels.kernels_off_reason()
    assert reason.startswith("kernels off: numba ships no wheel for") and "ppc64le" in reason
    # the grid runs without the fast columns and its table starts with the reason
    cases = bench_kernels.run_grid(["32x128"], reps=1, modes=("fwd",))
    assert "normlab-fast" not in cases[0].timings and "normlab" in cases[0].timings
    table = bench_kernels.format_table(cases)
    assert table.splitlines()[0] == reason
    env = bench_kernels.environment()
    assert env["kernels_off"] == reason


def test_bench_says_native_setting_turns_kernels_off():
    if not kernels.numba_available():
        pytest.skip("numba is not installed: the reason is its absence")
    assert bench_kernels.kernels_off_reason() is None or kernels.get_backend() == "native"
    with kernels.backend("native"):
        assert "'native'" in bench_kernels.kernels_off_reason()


def test_bench_models_main_prints_table_and_writes_json(tmp_path, capsys):
    import json

    out = tmp_path / "models.json"
    assert bench_models.main(["--models", "mlp", "--batch", "4", "--reps", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "normlab bench --models:" in printed and "mlp" in printed and f"wrote {out}" in printed
    data = json.loads(out.read_text())
    assert [m["model"] for m in data["models"]] == ["mlp"] and data["models"][0]["fused_pairs"] == 3
    assert set(data["models"][0]["bn_share"]) == {"torch", "normlab", "fused"}


def test_page_faults_counts_the_first_touch_of_fresh_pages():
    resource = pytest.importorskip("resource")  # the counter is Unix's getrusage
    assert resource is not None
    import mmap

    def touch_fresh_pages():  # an anonymous mapping: every page faults on its first write
        m = mmap.mmap(-1, 256 * mmap.PAGESIZE)
        for i in range(0, len(m), mmap.PAGESIZE):
            m[i] = 1
        m.close()

    assert harness.page_faults(touch_fresh_pages) >= 256
    assert harness.page_faults(lambda: None) < 256


class _SharedNorms(torch.nn.Module):
    """One NormAct held by two attributes, one BN held twice (bare and inside a nested Sequential)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.a = self.b = NormAct(BatchNorm2d(3), activation="relu")
        bn = BatchNorm2d(3)
        self.bn = bn
        self.inner = torch.nn.Sequential(torch.nn.Sequential(bn))

    def forward(self, x):
        return self.inner(self.bn(self.b(self.a(self.conv(x)))))


def test_kind_shared_module_free_norms_replaces_every_place_a_norm_is_held():
    """Regression: free_norms walked named_children, which lists a module held by two attributes once, so the
    second place kept a NormAct (its inner BN made free, its ReLU still applied) in the 'free' model."""
    model = _SharedNorms()
    free = bench_models.free_norms(model)
    assert not any(isinstance(m, NormAct) or bench_models.is_batch_norm(m) for m in free.modules())
    assert isinstance(free.a, bench_models._FreeNorm) and isinstance(free.b, bench_models._FreeNorm)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(free(x), free.conv(x))  # every norm (and its fused ReLU) gone
    assert isinstance(model.b, NormAct) and bench_models.is_batch_norm(model.bn)  # the original is untouched
    assert isinstance(bench_models.free_norms(BatchNorm2d(3)), bench_models._FreeNorm)  # a norm as the model


def test_kind_missing_platform_counter_page_faults_is_none(monkeypatch):
    """Without the resource module (Windows) page_faults is None and the table shows '-', not an ImportError."""
    import sys

    monkeypatch.setitem(sys.modules, "resource", None)  # import now raises ImportError
    assert harness.page_faults(lambda: None) is None
    t = {v: Timing.from_samples([1e-3]) for v in (*bench_models.VARIANTS, bench_models.FREE)}
    case = bench_models.ModelCase("cnn", 4, t, faults={v: None for v in t})
    assert bench_models.format_models_table([case]).splitlines()[-1].endswith("- / - / - / -")
    assert case.as_dict()["page_faults_per_step"] == {v: None for v in t}


def test_kind_ceiling_measured_with_subnormals_free_step_flushes_them():
    """Regression: the 'free' ResNet-20 (no normalization, logits ~850) sent subnormal gradients back through the
    network, and subnormal arithmetic made its step about 2x slower than with them flushed (324-333 against
    160-163 ms), so 'free x', the ceiling, read 0.71-0.72 (below the real variants). The free step now runs with
    subnormals flushed and restores the caller's setting, whether it was on or off and also when the step raises."""
    seen = []

    def step():
        seen.append(bench_models._flushing_subnormals())
        # a subnormal product is flushed to zero inside the step
        seen.append(torch.tensor(1e-20, dtype=torch.float32).mul(torch.tensor(1e-20)).item())

    def failing():
        raise RuntimeError("step failed")

    assert torch.set_flush_denormal(False), "this CPU cannot flush subnormals (no SSE3)"
    try:
        assert not bench_models._flushing_subnormals()
        assert torch.tensor(1e-20).mul(torch.tensor(1e-20)).item() > 0.0  # subnormals kept by default
        bench_models.without_subnormals(step)()
        assert seen == [True, 0.0]
        assert not bench_models._flushing_subnormals()  # off again after the step
        with pytest.raises(RuntimeError, match="step failed"):
            bench_models.without_subnormals(failing)()
        assert not bench_models._flushing_subnormals()  # and after a step that raised
        torch.set_flush_denormal(True)
        bench_models.without_subnormals(step)()
        assert bench_models._flushing_subnormals()  # a caller's 'on' stays on
    finally:
        torch.set_flush_denormal(False)
