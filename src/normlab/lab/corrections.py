"""The report section "Corrections": sentences of the seed articles that are wrong or misleading, what is true
(with the primary source), and an executable demonstration whose numbers the page shows.

Each :class:`Correction` quotes its sentence(s) verbatim with the article file and line (the articles live in
``/work/shared/seeds``, or ``$NORMLAB_SEEDS``), states what the papers say, and names a ``demonstrate`` function
that computes numbers with normlab's real layers (``normlab.nn``, ``normlab.functional``, ``normlab.reference``) and
returns them as a flat ``{name: number or list}`` dict. Every demonstration is deterministic (fixed generators) and
takes well under a second on a CPU. ``tests/lab/test_corrections.py`` asserts the numbers.

Python API: ``all_corrections()``, ``get_correction(id)``, ``correction_ids()``, ``compute_corrections()`` (the
JSON-able list the report stores in ``meta.corrections``), ``ARTICLES`` (article id -> file name), ``seeds_dir()``,
``article_lines(article_id)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["Sentence", "Correction", "ARTICLES", "seeds_dir", "article_lines", "all_corrections", "get_correction",
           "correction_ids", "compute_corrections"]

# The five seed articles (see report.SEED_ARTICLES for titles): id -> file name in the seeds directory.
ARTICLES = {
    "000": "000_9dab5e9a010b2c52.txt",
    "001": "001_0f776576243599fe.txt",
    "002": "002_2ca648713b604fad.txt",
    "003": "003_64889b3b8ceff029.txt",
    "004": "004_ffd2d6e73bb0ac56.txt",
}


def seeds_dir() -> Path:
    """Where the seed articles are: ``$NORMLAB_SEEDS`` or ``/work/shared/seeds``."""
    return Path(os.environ.get("NORMLAB_SEEDS", "/work/shared/seeds"))


def article_lines(article: str) -> list[str]:
    """The lines of seed article ``article`` ("000".."004"), without line ends; line n is ``[n - 1]``.

    Raises ValueError for an unknown id and FileNotFoundError (naming the directory) when the file is missing."""
    if article not in ARTICLES:
        raise ValueError(f"corrections: unknown seed article {article!r}; expected one of {', '.join(ARTICLES)}")
    path = seeds_dir() / ARTICLES[article]
    if not path.is_file():
        raise FileNotFoundError(f"corrections: seed article {article} not found at {path} (set NORMLAB_SEEDS)")
    return path.read_text(encoding="utf-8").splitlines()


@dataclass(frozen=True)
class Sentence:
    """Text quoted verbatim from line ``line`` (1-based) of seed article ``article`` ("000".."004")."""

    article: str
    line: int
    text: str

    @property
    def file(self) -> str:
        return ARTICLES[self.article]

    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def to_dict(self) -> dict[str, Any]:
        return {"article": self.article, "file": self.file, "line": self.line, "text": self.text}


@dataclass(frozen=True)
class Correction:
    """One wrong or misleading statement: the quotes, what is true, the sources, and the demonstration.

    ``numbers`` (from ``demonstrate()``) are described by ``reading``: how to read them, in one paragraph.
    ``claim`` is the id of a lab claim that measures the rest of the question (may be planned, not yet registered).
    """

    id: str
    title: str
    quotes: tuple[Sentence, ...]
    truth: str
    sources: tuple[str, ...]
    demonstrate: Callable[[], dict[str, Any]]
    reading: str
    claim: str | None = None


# -- demonstrations --------------------------------------------------------------------------------------------------
def _gen(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def _maxabs(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def _grad(t: torch.Tensor) -> torch.Tensor:
    """``t.grad`` after a backward pass that must have reached ``t`` (torch types it Optional)."""
    if t.grad is None:
        raise RuntimeError("corrections: a demo's backward pass did not reach a tensor it measures")
    return t.grad


def demo_layer_norm_per_example() -> dict[str, Any]:
    """LayerNorm normalizes each example over its own features: example 0's output is the same whatever the rest
    of the batch or the data set holds (BatchNorm's is not)."""
    import torch

    from .. import reference
    from ..nn import BatchNorm1d, LayerNorm

    g = _gen(0)
    features = 32
    batch = torch.randn(64, features, generator=g) * 3 + 1
    dataset = torch.randn(2000, features, generator=g) * 5 - 2  # a "training set" with other statistics
    ln = LayerNorm(features)
    bn = BatchNorm1d(features)
    assert ln.weight is not None and ln.bias is not None  # affine layers (the default)
    with torch.no_grad():
        for m in (ln, bn):
            assert m.weight is not None and m.bias is not None
            m.weight.copy_(torch.rand(features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(features, generator=g))
        one = batch[:1]
        y_in_batch = ln(batch)[0]
        y_alone = ln(one)[0]
        y_other_batch = ln(torch.cat([one, dataset[:63]]))[0]
        y_with_dataset = ln(torch.cat([one, dataset]))[0]
        ref = torch.from_numpy(reference.layer_norm_forward(one.numpy(), ln.weight.numpy(), ln.bias.numpy(),
                                                            eps=ln.eps)[0])[0]
        bn.train()
        b_in_batch = bn(batch)[0]
        b_other_batch = bn(torch.cat([one, dataset[:63]]))[0]
    return {
        "features": features,
        "ln_alone_vs_in_batch": _maxabs(y_alone, y_in_batch),
        "ln_other_batch_vs_in_batch": _maxabs(y_other_batch, y_in_batch),
        "ln_with_dataset_vs_in_batch": _maxabs(y_with_dataset, y_in_batch),
        "ln_vs_float64_reference": _maxabs(y_alone, ref),
        "ln_example_mean": float(((y_alone - ln.bias) / ln.weight).detach().mean()),
        "ln_example_var": float(((y_alone - ln.bias) / ln.weight).detach().var(unbiased=False)),
        "bn_other_batch_vs_in_batch": _maxabs(b_other_batch, b_in_batch),
    }


def demo_batch_renorm() -> dict[str, Any]:
    """Batch renormalization (Ioffe 2017): per channel, r = sigma_B / sigma and d = (mu_B - mu) / sigma (clipped to
    [1/r_max, r_max] and [-d_max, d_max]) move BatchNorm's output toward normalization by the running statistics;
    with r = 1, d = 0 it is BatchNorm; unclipped it *is* the running-statistics normalization (in value)."""
    import torch

    from ..nn import BatchNorm1d, BatchRenorm

    g = _gen(1)
    c = 4
    x = torch.randn(32, c, generator=g) * torch.tensor([1.0, 2.0, 0.5, 3.0]) + torch.tensor([0.5, 3.0, -1.0, 2.0])
    running_mean = torch.tensor([0.0, 1.0, -1.5, 3.5])
    running_var = torch.tensor([1.0, 4.0, 2.25, 9.0])
    gamma = torch.rand(c, generator=g) + 0.5
    beta = torch.randn(c, generator=g)

    def layer(cls, **kw):
        m = cls(c, **kw)
        with torch.no_grad():
            m.weight.copy_(gamma)
            m.bias.copy_(beta)
            m.running_mean.copy_(running_mean)
            m.running_var.copy_(running_var)
        return m.train()

    no_ramp = {"warmup_steps": 0, "r_max_steps": 0, "d_max_steps": 0}
    with torch.no_grad():
        y_bn = layer(BatchNorm1d)(x)
        y_as_bn = layer(BatchRenorm, r_max=1.0, d_max=0.0, **no_ramp)(x)
        y_free = layer(BatchRenorm, r_max=1e6, d_max=1e6, **no_ramp)(x)
        y_clip = layer(BatchRenorm, r_max=1.5, d_max=0.5, **no_ramp)(x)
    # r and d written from the paper's equations in float64, independently of the layer.
    xd = x.double()
    eps = 1e-5
    mu_b, sigma_b = xd.mean(0), torch.sqrt(xd.var(0, unbiased=False) + eps)
    sigma = torch.sqrt(running_var.double() + eps)
    r = sigma_b / sigma
    d = (mu_b - running_mean.double()) / sigma
    r_clip, d_clip = r.clamp(1 / 1.5, 1.5), d.clamp(-0.5, 0.5)
    x_hat = (xd - mu_b) / sigma_b
    gd, bd = gamma.double(), beta.double()
    y_running = gd * (xd - running_mean.double()) / sigma + bd  # normalization by the running statistics
    y_clip_formula = gd * (x_hat * r_clip + d_clip) + bd
    return {
        "batch_mean": mu_b.tolist(), "batch_std": sigma_b.tolist(),
        "running_mean": running_mean.tolist(), "running_std": sigma.tolist(),
        "r": r.tolist(), "d": d.tolist(), "r_clipped": r_clip.tolist(), "d_clipped": d_clip.tolist(),
        "r_max_clipped": 1.5, "d_max_clipped": 0.5,
        "brn_r1_d0_vs_bn": _maxabs(y_as_bn, y_bn),
        "brn_unclipped_vs_running_normalization": _maxabs(y_free, y_running),
        "bn_vs_running_normalization": _maxabs(y_bn, y_running),
        "brn_clipped_vs_running_normalization": _maxabs(y_clip, y_running),
        "brn_clipped_vs_formula": _maxabs(y_clip, y_clip_formula),
    }


def demo_affine_is_linear() -> dict[str, Any]:
    """BN's scale-and-shift is affine: its linear part obeys superposition to rounding; a sigmoid does not.
    The training-mode normalization is not linear in its input (it is scale invariant instead)."""
    import torch

    from .. import functional as NF
    from ..nn import BatchNorm1d

    g = _gen(2)
    c = 8
    bn = BatchNorm1d(c)
    assert bn.weight is not None and bn.bias is not None  # affine (the default)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) * 3 + 0.2)
        bn.weight.copy_(torch.randn(c, generator=g) * 2)
        bn.bias.copy_(torch.randn(c, generator=g))
    bn.eval()
    x, y = torch.randn(16, c, generator=g), torch.randn(16, c, generator=g)
    a, b, t = 1.7, -0.6, 0.3
    zero = torch.zeros(16, c)
    with torch.no_grad():
        def lin(v):  # the linear part of the affine map: f(v) - f(0)
            return bn(v) - bn(zero)

        def sig(v):
            return torch.sigmoid(bn(v)) - torch.sigmoid(bn(zero))

        def train_bn(v):
            return NF.batch_norm(v, None, None, bn.weight, bn.bias, training=True)

        return {
            "a": a, "b": b, "t": t,
            "eval_superposition_error": _maxabs(lin(a * x + b * y), a * lin(x) + b * lin(y)),
            "eval_affine_combination_error": _maxabs(bn(t * x + (1 - t) * y), t * bn(x) + (1 - t) * bn(y)),
            "sigmoid_superposition_error": _maxabs(sig(a * x + b * y), a * sig(x) + b * sig(y)),
            "train_superposition_error": _maxabs(train_bn(a * x + b * y) - bn.bias,
                                                 a * (train_bn(x) - bn.bias) + b * (train_bn(y) - bn.bias)),
            "train_scale_invariance_error": _maxabs(train_bn(5.0 * x), train_bn(x)),
            "train_linear_would_give": _maxabs(5.0 * (train_bn(x) - bn.bias), train_bn(x) - bn.bias),
        }


def demo_bias_cancelled() -> dict[str, Any]:
    """A bias added before BN is removed exactly by the mean subtraction (its gradient is zero); a bias added after
    BN's shift only adds to beta (same gradient, same function with beta + b)."""
    import torch

    from ..nn import BatchNorm1d
    from ..tools.inspect import find_redundant_biases

    g = _gen(3)
    dt = torch.float64
    lin = torch.nn.Linear(10, 6, dtype=dt)
    bn = BatchNorm1d(6, dtype=dt)
    assert bn.weight is not None and bn.bias is not None  # affine (the default)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(6, 10, generator=g, dtype=dt))
        lin.bias.copy_(torch.randn(6, generator=g, dtype=dt) * 3)
        bn.weight.copy_(torch.rand(6, generator=g, dtype=dt) + 0.5)
        bn.bias.copy_(torch.randn(6, generator=g, dtype=dt))
    x = torch.randn(32, 10, generator=g, dtype=dt)
    w_up = torch.randn(32, 6, generator=g, dtype=dt)  # a fixed upstream gradient: L = sum(w_up * y)
    y_with = bn(lin(x))
    (w_up * y_with).sum().backward()
    with torch.no_grad():
        y_without = bn(torch.nn.functional.linear(x, lin.weight))
    bias_grad = _grad(lin.bias).abs().max().item()
    weight_grad = _grad(lin.weight).abs().max().item()

    # A bias after the shift, as 002's equation (6): f(gamma * x_hat + beta + b), f = sigmoid.
    x_hat = torch.randn(32, 6, generator=g, dtype=dt)
    gamma = torch.rand(6, generator=g, dtype=dt) + 0.5
    beta = torch.randn(6, generator=g, dtype=dt).requires_grad_()
    b_after = torch.randn(6, generator=g, dtype=dt).requires_grad_()
    out = torch.sigmoid(gamma * x_hat + beta + b_after)
    (w_up * out).sum().backward()
    with torch.no_grad():
        merged = torch.sigmoid(gamma * x_hat + (beta + b_after))

    model = torch.nn.Sequential(torch.nn.Linear(10, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                                torch.nn.Linear(6, 3))
    found = find_redundant_biases(model, torch.randn(8, 10, generator=g))
    return {
        "dtype": "float64",
        "bias_max_abs": float(lin.bias.detach().abs().max()),
        "output_with_vs_without_bias": _maxabs(y_with.detach(), y_without),
        "bias_grad_max": bias_grad,
        "weight_grad_max": weight_grad,
        "after_bias_grad_vs_beta_grad": _maxabs(b_after.grad, beta.grad),
        "after_beta_grad_max": float(_grad(beta).abs().max()),
        "after_bias_vs_merged_beta": _maxabs(out.detach(), merged),
        "tool_example": "Sequential(Linear(10, 6), BatchNorm1d(6), ReLU(), Linear(6, 3))",
        "tool_found": [str(f) for f in found],
    }


def demo_running_average_normalization() -> dict[str, Any]:
    """Normalizing with running averages the gradient does not see (what 000 describes) lets a bias before the
    norm grow without bound while chasing its own running mean (Ioffe & Szegedy 2015, section 2); under BatchNorm
    the same bias receives no gradient at all."""
    import torch

    from ..nn import BatchNorm1d, RunningAverageNorm

    g = _gen(4)
    data = torch.randn(512, 10, generator=g)
    w0, b0 = torch.randn(4, 10, generator=g) * 0.3, torch.randn(4, generator=g) * 0.3
    out: dict[str, Any] = {"steps": 300, "lr": 0.1, "batch_size": 32, "target": 2.0}
    for name, cls in (("ran", RunningAverageNorm), ("bn", BatchNorm1d)):
        lin, norm = torch.nn.Linear(10, 4), cls(4, affine=False)
        with torch.no_grad():
            lin.weight.copy_(w0)
            lin.bias.copy_(b0)
        opt = torch.optim.SGD(lin.parameters(), lr=0.1)
        bias_at = []
        for step in range(300):
            i = (step * 32) % 512
            loss = ((norm(lin(data[i:i + 32])) - 2.0) ** 2).mean()  # ask for outputs of mean 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 100 == 99:
                bias_at.append(float((lin.bias.detach() - b0).abs().max()))
        out[f"{name}_bias_drift_at_100_200_300"] = bias_at
        out[f"{name}_final_loss"] = float(loss.detach())
        out[f"{name}_running_mean_max"] = float(norm.running_mean.abs().max())
    return out


# -- the corrections ---------------------------------------------------------------------------------------------
_CORRECTIONS: tuple[Correction, ...] = (
    Correction(
        id="layer-norm-per-example",
        title="Layer Normalization uses each example's own statistics, not the training set's",
        quotes=(Sentence("000", 58, "One approach is to compute the statistics not over the mini-batch, but over "
                                    "the entire training set. This is known as Layer Normalization."),),
        truth="Layer Normalization computes the mean and variance over the features (the summed inputs of one layer) "
              "of each example separately, in training and at test time alike; no statistic is shared between "
              "examples, let alone over the training set. (Statistics over the whole training set are what BatchNorm "
              "estimates with its running averages for inference.)",
        sources=("Ba, Kiros & Hinton, \"Layer Normalization\", 2016, arXiv:1607.06450, section 3",),
        demonstrate=demo_layer_norm_per_example,
        reading="Max abs difference of example 0's LayerNorm output (normlab.nn.LayerNorm, float32) computed in its "
                "batch of 64, alone, in a batch of other data, and beside a 2,000-example \"training set\"; and "
                "against the float64 reference from the equations. For contrast, BatchNorm's output for the same "
                "example when the rest of the batch changes.",
    ),
    Correction(
        id="batch-renorm-not-over-time",
        title="Batch Renormalization corrects batch statistics toward the running ones; it is not statistics over time",
        quotes=(Sentence("000", 58, "Another approach is to compute the statistics over the mini-batch and over "
                                    "time, which is known as Batch Renormalization."),),
        truth="Batch Renormalization is a fix for small or non-i.i.d. mini-batches: it normalizes with the batch "
              "statistics and then applies per-channel corrections r = sigma_B / sigma and d = (mu_B - mu) / sigma "
              "(clipped, treated as constants in the gradient) computed against the running statistics, so training "
              "sees the same transform as inference. Batch statistics kept per time step for recurrent networks are "
              "recurrent batch normalization (normlab.nn.TimeStepBatchNorm).",
        sources=("Ioffe, \"Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models\", "
                 "NeurIPS 2017, arXiv:1702.03275, Algorithm 1",
                 "Cooijmans et al., \"Recurrent Batch Normalization\", ICLR 2017, arXiv:1603.09025"),
        demonstrate=demo_batch_renorm,
        reading="normlab.nn.BatchRenorm in training (no warm-up) on a batch of 32 whose statistics differ from the "
                "running ones: r and d per channel (float64, from the equations), then max abs differences: BRN with "
                "r_max=1, d_max=0 against BatchNorm; unclipped BRN against normalization by the running statistics; "
                "BatchNorm and clipped BRN (r_max=1.5, d_max=0.5) against the same — the clipped one lies between.",
        claim="small-batches",
    ),
    Correction(
        id="affine-is-linear",
        title="BN's scale and shift are affine: they add no non-linearity",
        quotes=(Sentence("002", 35, "The rescaling and offsetting steps add non-linearity to the community and "
                                    "forestall saturation of the sigmoid capabilities within the community."),
                Sentence("002", 80, "The learnable parameters γ and β assist protect the non-linearity of the "
                                    "community and counteract any potential saturation within the activation "
                                    "capabilities.")),
        truth="y = gamma * x_hat + beta is an affine map of x_hat; composing affine maps never adds non-linearity. "
              "The original paper introduces gamma and beta so that the inserted transform can represent the "
              "identity (restore the representation power, e.g. let a sigmoid's input leave its linear regime), "
              "not to add non-linearity. Whether BN keeps sigmoids out of saturation is measured by the "
              "sigmoid-saturation claim.",
        sources=("Ioffe & Szegedy, \"Batch Normalization: Accelerating Deep Network Training by Reducing Internal "
                 "Covariate Shift\", ICML 2015, arXiv:1502.03167, section 3",),
        demonstrate=demo_affine_is_linear,
        reading="normlab.nn.BatchNorm1d in eval mode (random running statistics, gamma, beta; float32) is the affine "
                "step alone: with L(v) = f(v) - f(0), max |L(a x + b y) - a L(x) - b L(y)| (superposition), and "
                "max |f(t x + (1-t) y) - t f(x) - (1-t) f(y)|; the same for sigmoid(f), which is non-linear.",
        claim="sigmoid-saturation",
    ),
    Correction(
        id="normalization-not-linear",
        title="BN's training-mode normalization is not a linear transformation",
        quotes=(Sentence("002", 25, "This layer applies a linear transformation to the enter values, adopted by "
                                    "rescaling and offsetting."),),
        truth="In training, x_hat = (x - mu_B) / sqrt(sigma_B^2 + eps) divides by a statistic of its own input: it is "
              "invariant to scaling the input (BN(5x) = BN(x) up to eps), which no linear map is. Only in eval mode, "
              "with frozen running statistics, is the whole layer an affine map.",
        sources=("Ioffe & Szegedy, ICML 2015, arXiv:1502.03167, section 3 (Algorithm 1) and section 3.1",),
        demonstrate=demo_affine_is_linear,
        reading="normlab.functional.batch_norm in training mode on the same inputs: the superposition error of its "
                "linear part (large), max |BN(5x) - BN(x)| (rounding: scale invariance) and what a linear map would "
                "give, max |5 BN(x) - BN(x)|.",
    ),
    Correction(
        id="bias-before-bn-cancelled",
        title="A bias before BN is cancelled by the mean subtraction; a bias after BN's shift duplicates beta",
        quotes=(Sentence("002", 76, "To include batch normalization, we first normalize the weighted sum "
                                    "(Σ(w_ij * x_j)) earlier than making use of the activation perform."),
                Sentence("002", 78, "a_i = f(γ * x̂_i + β + b_i)\u00a0(6)")),
        truth="Batch normalization subtracts the batch mean, so any per-channel constant added before it (the layer's "
              "bias b) cancels exactly and receives zero gradient; the paper therefore drops it: "
              "z = g(BN(Wu)), with beta taking the bias's role. Adding b_i after the shift, as equation (6) does, "
              "gives f(gamma x_hat + (beta + b_i)): b_i and beta always receive the same gradient and only their sum "
              "matters, so one of them is redundant. normlab.tools.find_redundant_biases reports such biases in a "
              "model.",
        sources=("Ioffe & Szegedy, ICML 2015, arXiv:1502.03167, section 3.2 (\"the bias b can be ignored since its "
                 "effect will be canceled by the subsequent mean subtraction\")",),
        demonstrate=demo_bias_cancelled,
        reading="float64: normlab.nn.BatchNorm1d in training after a Linear whose bias is large: max abs difference of "
                "the output with and without the bias, and max |dL/db| for a fixed upstream gradient (dL/dW for "
                "scale). After the shift: max |dL/db - dL/dbeta| and the output against beta + b with no b. Last, "
                "what find_redundant_biases reports for a small model.",
    ),
    Correction(
        id="running-average-not-mabn",
        title="Normalizing with running averages is not Moving Average BN, and alone it does not work",
        quotes=(Sentence("000", 74, "This can be done by maintaining a running average of the mean and variance and "
                                    "using this running average for normalization instead of the mini-batch "
                                    "statistics. This is known as Moving Average Batch Normalization."),),
        truth="Normalizing with running averages that the gradient treats as constants is the scheme the original "
              "paper rejects in its section 2: the gradient step ignores the normalization, so a parameter can grow "
              "without bound while the loss stays put (\"the model blows up\"). Moving Average Batch Normalization "
              "(Yan et al., ICLR 2020) is different: it normalizes without centring by a simple moving average of "
              "the second moment over recent iterations, also replaces the batch statistics of the backward pass by "
              "moving averages, and pairs with weight centralization (normlab.nn.MovingAverageBatchNorm). The naive "
              "scheme is normlab.nn.RunningAverageNorm; whether it helps small batches is the "
              "running-average-normalization claim.",
        sources=("Ioffe & Szegedy, ICML 2015, arXiv:1502.03167, section 2",
                 "Yan et al., \"Towards Stabilizing Batch Statistics in Backward Propagation of Batch "
                 "Normalization\", ICLR 2020, openreview SkgGjRVKDS"),
        demonstrate=demo_running_average_normalization,
        reading="A Linear(10, 4) followed by a norm without affine, trained by SGD (lr 0.1, batch 32, 300 steps, "
                "float32) to output mean 2 per unit, which a centring norm cannot do: with "
                "normlab.nn.RunningAverageNorm the bias keeps growing (drift from its start at steps 100, 200, 300) "
                "as it chases its own running mean; with normlab.nn.BatchNorm1d it gets zero gradient and does not "
                "move, and the loss stays at 1 + 2^2 = 5.",
        claim="running-average-normalization",
    ),
)


def all_corrections() -> list[Correction]:
    """Every correction, in page order."""
    return list(_CORRECTIONS)


def correction_ids() -> list[str]:
    return [c.id for c in _CORRECTIONS]


def get_correction(correction_id: str) -> Correction:
    for c in _CORRECTIONS:
        if c.id == correction_id:
            return c
    raise ValueError(f"corrections: unknown correction {correction_id!r}; valid ids: {', '.join(correction_ids())}")


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def compute_corrections() -> list[dict[str, Any]]:
    """Run every demonstration once and return the JSON-able section: id, title, quotes (article, file, line,
    text), truth, sources, claim, reading, numbers. A demonstration that raises is recorded with ``error`` and no
    numbers (the page says so) rather than losing the report. The caller's torch thread count and global RNG state
    are left as they were."""
    import torch

    memo: dict[Callable, tuple[dict[str, Any], str | None]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend (14 s instead of 2 s on a busy machine)
    try:
        with torch.random.fork_rng(devices=[]):  # layer constructors draw from the global RNG
            for c in _CORRECTIONS:
                if c.demonstrate in memo:  # two corrections may read the same demonstration: run it once
                    continue
                try:
                    memo[c.demonstrate] = ({k: _clean(v) for k, v in c.demonstrate().items()}, None)
                except Exception as exc:  # noqa: BLE001 - the report must still be written; the error is shown
                    memo[c.demonstrate] = ({}, f"{type(exc).__name__}: {exc}")
    finally:
        torch.set_num_threads(threads)
    out = []
    for c in _CORRECTIONS:
        numbers, error = memo[c.demonstrate]
        out.append({"id": c.id, "title": c.title, "quotes": [q.to_dict() for q in c.quotes], "truth": c.truth,
                    "sources": list(c.sources), "claim": c.claim, "reading": c.reading,
                    "demonstration": f"normlab.lab.corrections.{c.demonstrate.__name__}",
                    "numbers": numbers, "error": error})
    return out
