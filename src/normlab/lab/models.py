"""The lab's models. Every builder takes ``norm=<make_norm spec>`` ("bn", "ln", "gn:32", "none", ...).

All builders share one signature shape: ``builder(input_shape, num_classes, *, norm=..., <options>)`` and return
an ``nn.Module`` mapping ``(N, *input_shape)`` to logits ``(N, num_classes)``. :func:`build_model` looks builders
up by name in :data:`MODELS`, and :func:`model_options` lists the options of one (the sweep validates grid keys
against it).

Shared options
- ``init``: "default" (torch's), "he" (Kaiming normal, fan_in), "xavier" (Glorot normal), "glorot_uniform"
  (Glorot uniform, Keras' Dense default), "lecun" (normal with
  std 1/sqrt(fan_in)), "normal" (N(0, 0.01^2)); ``init_scale`` multiplies every weight matrix after init (bad
  scales are where BN is claimed to help). Biases start at zero unless ``init == "default"``.
- ``init_std``: the standard deviation of ``init="normal"`` (default 0.01; Ioffe & Szegedy's Fig. 1 uses 0.1).
- ``dropout``: rate in [0, 1); ``dropout_position``: "after" (norm -> activation -> dropout, the usual place),
  "before" (dropout -> norm, the order Li et al. 2019 call the variance shift) or, for the MLPs, "last" (dropout
  only after the last hidden block, i.e. after every norm: Li et al.'s remedy).
- ``noise_shift`` / ``noise_scale`` (MLPs): after every norm, in training only, ``y * s + m`` with per-unit
  ``s ~ U(1 - noise_scale, 1 + noise_scale)`` and ``m ~ U(-noise_shift, noise_shift)`` drawn at every forward: the
  "noisy BN" of Santurkar et al. 2018, Sec. 2.1 (a covariate shift injected on purpose). 0 = off.
- ``norm_kw``: extra keyword arguments passed to ``make_norm`` (e.g. momentum, eps).
- ``norm="wn"`` (``mlp``, ``cnn``): weight normalization (Salimans & Kingma 2016, arXiv:1602.07868) instead of an
  activation norm: torch's ``torch.nn.utils.parametrizations.weight_norm`` on every layer that would precede a
  norm (the hidden Linear / Conv layers), no norm layer. Applied after the init, so at init the reparametrized
  weight equals the initialized one.
- ``dropout_kind`` (``mlp``, ``cnn``): "standard" (``nn.Dropout`` / ``nn.Dropout2d``) or "alpha" (``nn.AlphaDropout``
  / ``nn.FeatureAlphaDropout``: Klambauer et al. 2017's dropout that keeps the mean and variance of its input).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "MODELS",
    "build_model",
    "model_options",
    "norm_layer",
    "seed_mlp",
    "ioffe_mlp",
    "mlp",
    "cnn",
    "resnet",
    "rnn",
    "seq_rnn",
    "sequence_lengths",
    "resample_rows",
    "INITS",
    "ACTIVATIONS",
    "init_weights",
    "norm_available",
]

INITS = ("default", "he", "xavier", "lecun", "normal", "glorot_uniform")
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "identity": nn.Identity,
}
DROPOUT_POSITIONS = ("after", "before", "last")
DROPOUT_KINDS = ("standard", "alpha")
WEIGHT_NORM = "wn"


def _is_wn(norm: str) -> bool:
    return isinstance(norm, str) and norm.strip().lower() == WEIGHT_NORM


def _apply_weight_norm(layers: Sequence[nn.Module]) -> None:
    """Weight normalization (w = g v / ||v||, norm over every dim but the output one) on ``layers``, in place."""
    from torch.nn.utils.parametrizations import weight_norm

    for layer in layers:
        weight_norm(layer, name="weight", dim=0)


def norm_layer(spec: str, num_features: int, **kw) -> nn.Module:
    """``normlab.nn.make_norm(spec, num_features, **kw)`` (``"none"`` gives an Identity)."""
    from ..nn import make_norm

    return make_norm(spec, num_features, **kw)


def _check_choice(builder: str, key: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{builder}: {key}={value!r} is not allowed; expected one of {list(allowed)}")


def _check_common(
    builder: str, init: str, init_scale: float, dropout: float, dropout_position: str, init_std: float = 0.01,
    positions: Sequence[str] = ("after", "before"),
) -> None:
    _check_choice(builder, "init", init, INITS)
    _check_choice(builder, "dropout_position", dropout_position, positions)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{builder}: dropout must lie in [0, 1), got {dropout}")
    if not init_scale > 0:
        raise ValueError(f"{builder}: init_scale must be positive, got {init_scale}")
    _check_positive(builder, "init_std", init_std)


def _check_positive(builder: str, key: str, value, *, zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{builder}: expected {key} as a finite number {'>=' if zero else '>'} 0, got {value!r}")


def norm_available(spec: str) -> str | None:
    """``None`` if ``norm_layer(spec, ...)`` can be built here, else the reason (an unknown or unmerged layer).
    ``"wn"`` (weight norm, a builder option of ``mlp`` and ``cnn``, not a layer) is always available."""
    if _is_wn(spec):
        return None
    try:
        norm_layer(spec, 8)
    except (ImportError, NotImplementedError) as exc:
        return f"make_norm({spec!r}): {exc}"
    return None


def _activation(builder: str, name: str) -> nn.Module:
    _check_choice(builder, "activation", name, list(ACTIVATIONS))
    return ACTIVATIONS[name]()


def init_weights(model: nn.Module, init: str = "default", scale: float = 1.0, std: float = 0.01) -> nn.Module:
    """Re-initialize every Linear/Conv/RNN weight of ``model`` with scheme ``init`` times ``scale`` (in place);
    ``std`` is the standard deviation of ``init="normal"``."""
    _check_choice("init_weights", "init", init, INITS)
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                continue
            w = m.weight
            fan_in = w[0].numel()
            if init == "he":
                nn.init.kaiming_normal_(w, nonlinearity="relu")
            elif init == "xavier":
                nn.init.xavier_normal_(w)
            elif init == "glorot_uniform":
                nn.init.xavier_uniform_(w)
            elif init == "lecun":
                nn.init.normal_(w, 0.0, 1.0 / math.sqrt(fan_in))
            elif init == "normal":
                nn.init.normal_(w, 0.0, std)
            if init != "default" and m.bias is not None:
                nn.init.zeros_(m.bias)
            if scale != 1.0:
                w.mul_(scale)
    return model


def _block(
    layer: nn.Module, norm: nn.Module, act: nn.Module, dropout: float, dropout_position: str, dropout_cls=nn.Dropout
) -> list[nn.Module]:
    """layer -> norm -> act with dropout before the norm or after the activation ("last": the caller decides)."""
    drop = [dropout_cls(dropout)] if dropout > 0 else []
    if dropout_position == "before":
        return [layer, *drop, norm, act]
    return [layer, norm, act, *drop]


class NormNoise(nn.Module):
    """Santurkar et al. (2018, Sec. 2.1) "noisy BN": in training, ``y * s + m`` with ``s ~ U(1 - scale, 1 + scale)``
    and ``m ~ U(-shift, shift)`` drawn per unit (axis 1) at every forward; the identity in eval mode."""

    def __init__(self, shift: float, scale: float) -> None:
        super().__init__()
        self.shift, self.scale = float(shift), float(scale)

    def forward(self, y: Tensor) -> Tensor:
        if not self.training:
            return y
        n = y.shape[1]
        s = 1 + self.scale * (2 * torch.rand(n) - 1)
        m = self.shift * (2 * torch.rand(n) - 1)
        return y * s + m

    def extra_repr(self) -> str:
        return f"shift={self.shift}, scale={self.scale}"


def _flat_features(input_shape: Sequence[int]) -> int:
    return int(math.prod(input_shape))


# ------------------------------------------------------------------------------------------------------------ MLPs
def seed_mlp(input_shape: Sequence[int], num_classes: int, *, norm: str = "bn", norm_kw: dict | None = None,
             init: str = "default", keras_bn: bool = False) -> nn.Module:
    """The seed article's Keras model: Flatten -> Dense(128, ReLU) -> [norm] -> Dense(num_classes).

    ``init``: one of :data:`INITS` for both Linear layers (see :func:`init_weights`; "he" is the standard init
    for the ReLU layer, "glorot_uniform" Keras' default), default torch's. ``keras_bn``: with ``norm="bn"``, the
    layer is ``normlab.nn.BatchNorm.keras(128, **norm_kw)`` (Keras' defaults: momentum 0.99 as the weight of the
    old running value, epsilon 1e-3, biased running variance). Raises ValueError for ``keras_bn`` with another
    norm."""
    _check_choice("seed_mlp", "init", init, INITS)
    if keras_bn and norm != "bn":
        raise ValueError(f"seed_mlp: keras_bn=True needs norm='bn' (Keras' BatchNormalization), got norm={norm!r}")
    norm_mod: nn.Module
    if keras_bn:
        from ..nn import BatchNorm

        norm_mod = BatchNorm.keras(128, **(norm_kw or {}))
    else:
        norm_mod = norm_layer(norm, 128, **(norm_kw or {}))
    return init_weights(nn.Sequential(
        nn.Flatten(),
        nn.Linear(_flat_features(input_shape), 128),
        nn.ReLU(),
        norm_mod,
        nn.Linear(128, num_classes),
    ), init)


def ioffe_mlp(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    norm: str = "bn",
    init: str = "default",
    init_scale: float = 1.0,
    init_std: float = 0.01,
    noise_shift: float = 0.0,
    noise_scale: float = 0.0,
    norm_kw: dict | None = None,
) -> nn.Module:
    """Ioffe & Szegedy (2015), Fig. 1: three hidden layers of 100 sigmoid units, norm before each nonlinearity
    (the paper's small Gaussian initial weights: ``init="normal", init_std=0.1``)."""
    return mlp(
        input_shape, num_classes, norm=norm, depth=3, width=100, activation="sigmoid", init=init,
        init_scale=init_scale, init_std=init_std, noise_shift=noise_shift, noise_scale=noise_scale, norm_kw=norm_kw,
    )


def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    norm: str = "bn",
    depth: int = 4,
    width: int = 128,
    widths: Sequence[int] | None = None,
    activation: str = "relu",
    init: str = "default",
    init_scale: float = 1.0,
    init_std: float = 0.01,
    dropout: float = 0.0,
    dropout_position: str = "after",
    dropout_kind: str = "standard",
    norm_position: str = "before",
    noise_shift: float = 0.0,
    noise_scale: float = 0.0,
    norm_kw: dict | None = None,
) -> nn.Module:
    """``depth`` hidden blocks Linear(width) -> norm -> activation (-> dropout), then Linear(num_classes).

    ``widths`` (a list of hidden widths) replaces ``depth`` x ``width`` when given. ``dropout_position="last"``
    puts one dropout after the last hidden block only. ``noise_shift``/``noise_scale`` add :class:`NormNoise` after
    every norm (see the module docstring). ``norm="wn"``: weight norm on the hidden Linear layers, no norm layer;
    ``dropout_kind="alpha"``: ``nn.AlphaDropout`` (module docstring). ``norm_position``: "before" the activation
    (Linear -> norm -> activation, Ioffe & Szegedy's place) or "after" it (Linear -> activation -> norm)."""
    _check_common("mlp", init, init_scale, dropout, dropout_position, init_std, DROPOUT_POSITIONS)
    _check_choice("mlp", "dropout_kind", dropout_kind, DROPOUT_KINDS)
    _check_choice("mlp", "norm_position", norm_position, ("before", "after"))
    wn = _is_wn(norm)
    if wn and (noise_shift > 0 or noise_scale > 0):
        raise ValueError("mlp: norm='wn' has no norm layer to add noise after; expected noise_shift = noise_scale = 0")
    drop_cls = nn.AlphaDropout if dropout_kind == "alpha" else nn.Dropout
    pre_norm: list[nn.Module] = []
    _check_positive("mlp", "noise_shift", noise_shift, zero=True)
    _check_positive("mlp", "noise_scale", noise_scale, zero=True)
    if widths is None:
        if depth < 1 or width < 1:
            raise ValueError(f"mlp: depth and width must be >= 1, got depth={depth}, width={width}")
        widths = [width] * depth
    elif not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        raise ValueError(f"mlp: expected widths as a non-empty list of ints >= 1, got {widths!r}")
    noisy = noise_shift > 0 or noise_scale > 0
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = _flat_features(input_shape)
    for i, w in enumerate(widths):
        nrm = nn.Identity() if wn else norm_layer(norm, w, **(norm_kw or {}))
        if noisy:
            nrm = nn.Sequential(nrm, NormNoise(noise_shift, noise_scale))
        here = dropout if dropout_position != "last" or i == len(widths) - 1 else 0.0
        lin = nn.Linear(fan_in, w)
        pre_norm.append(lin)
        act = _activation("mlp", activation)
        if norm_position == "after":
            nrm, act = act, nrm  # Linear -> activation -> norm: the block's two middle slots swap
        layers += _block(lin, nrm, act, here, "after" if dropout_position == "last" else dropout_position, drop_cls)
        fan_in = w
    layers.append(nn.Linear(fan_in, num_classes))
    model = init_weights(nn.Sequential(*layers), init, init_scale, init_std)
    if wn:
        _apply_weight_norm(pre_norm)  # after the init: the parametrization starts from the initialized weight
    return model


# ------------------------------------------------------------------------------------------------------------ CNNs
def cnn(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    norm: str = "bn",
    channels: Sequence[int] = (16, 32),
    activation: str = "relu",
    init: str = "default",
    init_scale: float = 1.0,
    init_std: float = 0.01,
    dropout: float = 0.0,
    dropout_position: str = "after",
    dropout_kind: str = "standard",
    pool: str = "max",
    head_pool: int = 1,
    conv_bias: bool = True,
    norm_kw: dict | None = None,
) -> nn.Module:
    """Small CNN: per entry of ``channels`` a 3x3 conv -> norm -> activation (-> dropout) -> 2x2 max-pool (while the
    map is at least 2 wide; ``pool="none"`` keeps the full resolution), then average pooling to ``head_pool`` x
    ``head_pool`` (1: global) and a linear classifier. ``conv_bias=False`` drops the convs' bias (redundant before
    a centring norm). ``norm="wn"``: weight norm on the convs, no norm layer; ``dropout_kind="alpha"``:
    ``nn.FeatureAlphaDropout`` (module docstring). Input ``(N, C, H, W)``."""
    _check_common("cnn", init, init_scale, dropout, dropout_position, init_std)
    _check_choice("cnn", "dropout_kind", dropout_kind, DROPOUT_KINDS)
    wn = _is_wn(norm)
    drop_cls = nn.FeatureAlphaDropout if dropout_kind == "alpha" else nn.Dropout2d
    pre_norm: list[nn.Module] = []
    _check_choice("cnn", "pool", pool, ("max", "none"))
    if not isinstance(head_pool, int) or isinstance(head_pool, bool) or head_pool < 1:
        raise ValueError(f"cnn: expected head_pool as an int >= 1, got {head_pool!r}")
    if not isinstance(conv_bias, bool):
        raise ValueError(f"cnn: expected conv_bias as true or false, got {conv_bias!r}")
    if len(input_shape) != 3:
        raise ValueError(f"cnn: expected an image input_shape (C, H, W), got {tuple(input_shape)}")
    c_in, size = input_shape[0], min(input_shape[1:])
    layers: list[nn.Module] = []
    for c in channels:
        conv = nn.Conv2d(c_in, c, 3, padding=1, bias=conv_bias)
        pre_norm.append(conv)
        layers += _block(
            conv, nn.Identity() if wn else norm_layer(norm, c, **(norm_kw or {})),
            _activation("cnn", activation), dropout, dropout_position, drop_cls,
        )
        if pool == "max" and size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(head_pool), nn.Flatten(), nn.Linear(c_in * head_pool**2, num_classes)]
    model = init_weights(nn.Sequential(*layers), init, init_scale, init_std)
    if wn:
        _apply_weight_norm(pre_norm)  # after the init: the parametrization starts from the initialized weight
    return model


class _BasicBlock(nn.Module):
    """He et al. (2016) basic residual block: conv-norm-relu-conv-norm, plus identity (or 1x1 conv-norm) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, norm_kw: dict, dropout: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm_layer(norm, c_out, **norm_kw)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = norm_layer(norm, c_out, **norm_kw)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm_layer(norm, c_out, **norm_kw)
            )

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(self.drop(h)))
        return torch.relu(h + self.shortcut(x))


def resnet(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    norm: str = "bn",
    widths: Sequence[int] = (16, 32, 64),
    blocks_per_stage: int = 1,
    init: str = "he",
    init_scale: float = 1.0,
    dropout: float = 0.0,
    norm_kw: dict | None = None,
) -> nn.Module:
    """A small ResNet (He et al. 2016, CIFAR style): 3x3 stem, one stage per width (stride 2 after the first),
    ``blocks_per_stage`` basic blocks each, global average pooling, linear classifier."""
    _check_common("resnet", init, init_scale, dropout, "after")
    if len(input_shape) != 3:
        raise ValueError(f"resnet: expected an image input_shape (C, H, W), got {tuple(input_shape)}")
    kw = norm_kw or {}
    layers: list[nn.Module] = [
        nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False), norm_layer(norm, widths[0], **kw), nn.ReLU()
    ]
    c_in = widths[0]
    for i, w in enumerate(widths):
        for b in range(blocks_per_stage):
            layers.append(_BasicBlock(c_in, w, 2 if (i > 0 and b == 0) else 1, norm, kw, dropout))
            c_in = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return init_weights(nn.Sequential(*layers), init, init_scale)


# ------------------------------------------------------------------------------------------------------- recurrent
RECURRENT_BN = ("bn", "tbn")


class _NormRNN(nn.Module):
    """Recurrent BN (Cooijmans et al. 2016, arXiv:1603.09025) on a tanh or LSTM cell, statistics separate per time
    step t. ``cell="tanh"``:

        h_t = tanh( BN_t(W_h h_{t-1}; gamma_h) + BN_t(W_x x_t; gamma_x) + b )

    ``cell="lstm"`` is the paper's BN-LSTM (its Eqs. 6-8), gates in the order (f, i, o, g):

        (f, i, o, g) = BN_t(W_h h_{t-1}; gamma_h) + BN_t(W_x x_t; gamma_x) + b
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh( BN_t(c_t; gamma_c, beta_c) )

    with the forget-gate part of b starting at 1 (the authors' sequential-MNIST code does so for the BN-LSTM and
    the baseline alike).

    With ``norm="bn"`` or ``"tbn"`` each term has one :class:`~normlab.nn.TimeStepBatchNorm`: its own batch and
    running statistics per step t < T_max (steps beyond reuse the last step's running statistics at inference), one
    gamma shared by all steps and initialized to 0.1, and no beta on the two gate terms (the paper sets beta_h =
    beta_x = 0 because the cell's b already is a shift); the cell-state BN keeps its beta_c. ``norm_kw`` reaches
    the layers, e.g. ``gamma_init=1.0`` or ``momentum``.

    Any other spec builds one make_norm layer per time step and term (``norm_x[t]``, ``norm_h[t]``, ``norm_c[t]``;
    steps beyond ``max_steps`` reuse the last), so batch statistics are never pooled over time either.

    ``init_noise`` > 0 draws the initial hidden state h_0 from N(0, init_noise^2), in training and at inference:
    the paper's remedy on sequential MNIST, where a zero h_0 and the black top rows make the recurrent term
    constant over the batch for the first steps; BN then divides a zero variance by sqrt(eps) (Sec. 5.1), and at
    inference the running mean's lag behind the weights is amplified by 1/sqrt(eps). h_0 = 0 when 0. The
    classifier reads the last hidden state.
    """

    def __init__(
        self, features: int, hidden: int, num_classes: int, max_steps: int, norm: str, norm_kw: dict, dropout: float,
        cell: str = "tanh", init_noise: float = 0.0,
    ) -> None:
        super().__init__()
        self.hidden, self.cell, self.init_noise = hidden, cell, float(init_noise)
        gates = 4 * hidden if cell == "lstm" else hidden
        self.w_x = nn.Linear(features, gates, bias=False)
        self.w_h = nn.Linear(hidden, gates, bias=False)
        self.bias = nn.Parameter(torch.zeros(gates))
        if cell == "lstm":
            with torch.no_grad():
                self.bias[:hidden] = 1.0  # forget gate
        name, sep, rest = norm.strip().lower().partition(":")
        self.recurrent_bn = name in RECURRENT_BN
        if self.recurrent_bn:
            if name == "bn" and sep:
                raise ValueError(f"rnn: norm={norm!r} takes no ':<int>'; write 'tbn:<T_max>' to set T_max")
            # "bn" and "tbn" mean T_max = the sequence length; "tbn:<int>" sets it.
            spec = "tbn" + (":" + rest if sep else "")
            kw = dict(norm_kw) if sep else {"max_steps": max_steps, **norm_kw}
            self.norm_x: nn.Module = norm_layer(spec, gates, **kw)
            self.norm_h: nn.Module = norm_layer(spec, gates, **kw)
            for layer in (self.norm_x, self.norm_h):
                if getattr(layer, "bias", None) is not None:
                    # beta = 0, not learned: b is the cell's shift (Cooijmans et al., Sec. 3)
                    layer.register_parameter("bias", None)
            self.norm_c: nn.Module | None = None
            if cell == "lstm":
                self.norm_c = norm_layer(spec, hidden, **kw)
        else:
            def per_step(width):
                return nn.ModuleList(norm_layer(norm, width, **norm_kw) for _ in range(max_steps))
            self.norm_x, self.norm_h = per_step(gates), per_step(gates)
            self.norm_c = per_step(hidden) if cell == "lstm" else None
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(hidden, num_classes)
        nn.init.orthogonal_(self.w_h.weight)

    def _norm(self, which: nn.Module | None, z: Tensor, t: int) -> Tensor:
        if which is None:
            raise RuntimeError("_NormRNN: this cell has no norm layer for the term asked for")
        if self.recurrent_bn:
            return which(z, step=t)
        assert isinstance(which, nn.ModuleList)  # one layer per time step
        return which[min(t, len(which) - 1)](z)

    def forward(self, x: Tensor) -> Tensor:
        # (N, T, F): time-major loop; the input projection of every step is computed in one matmul.
        n, steps = x.shape[0], x.shape[1]
        xs = self.w_x(x)
        h = x.new_zeros(n, self.hidden)
        if self.init_noise > 0:
            h = torch.randn_like(h) * self.init_noise
        c = x.new_zeros(n, self.hidden)
        for t in range(steps):
            z = self._norm(self.norm_h, self.w_h(h), t) + self._norm(self.norm_x, xs[:, t], t) + self.bias
            if self.cell == "lstm":
                f, i, o, g = z.chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(self._norm(self.norm_c, c, t))
            else:
                h = torch.tanh(z)
        return self.head(self.drop(h))


def rnn(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    norm: str = "bn",
    hidden: int = 64,
    cell: str = "tanh",
    init_noise: float = 0.0,
    init: str = "default",
    init_scale: float = 1.0,
    dropout: float = 0.0,
    norm_kw: dict | None = None,
) -> nn.Module:
    """Recurrent classifier with per-time-step norm. Images (C, H, W) are read row by row (H steps of C*W
    features, "sequential MNIST by rows"); inputs (T, F) are sequences already.

    ``norm="bn"`` (the default) is recurrent BN as in the literature, i.e. the same as ``"tbn"``: one
    :class:`~normlab.nn.TimeStepBatchNorm` per term with statistics per time step up to T_max = the sequence
    length, gamma 0.1, beta 0 (``"tbn:<int>"`` sets T_max; ``norm_kw={"gamma_init": 1.0}`` gives gamma 1). Other
    specs ("ln", "gn:4", "none", ...) build one layer per time step. ``cell``: ``"tanh"`` or ``"lstm"`` (the
    BN-LSTM of Cooijmans et al.); ``init_noise``: standard deviation of a random initial hidden state (the paper
    uses 0.1 on sequential MNIST). See ``_NormRNN``."""
    _check_common("rnn", init, init_scale, dropout, "after")
    _check_choice("rnn", "cell", cell, ("tanh", "lstm"))
    if not (isinstance(init_noise, (int, float)) and math.isfinite(init_noise) and init_noise >= 0):
        raise ValueError(f"rnn: expected init_noise as a finite number >= 0, got {init_noise!r}")
    if len(input_shape) == 3:
        steps, features = input_shape[1], input_shape[0] * input_shape[2]
        pre: nn.Module = _RowsAsSequence()
    elif len(input_shape) == 2:
        steps, features = input_shape
        pre = nn.Identity()
    else:
        raise ValueError(f"rnn: expected input_shape (T, F) or (C, H, W), got {tuple(input_shape)}")
    net = _NormRNN(features, hidden, num_classes, steps, norm, norm_kw or {}, dropout, cell, init_noise)
    init_weights(net, init, init_scale)
    return nn.Sequential(pre, net)


class _RowsAsSequence(nn.Module):
    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, H, C*W)
        return x.permute(0, 2, 1, 3).flatten(2)


# ----------------------------------------------------------------------------------------- variable-length sequences
SEQUENCE_NORMS = ("bn", "masked", "brn", "ln", "wn", "none")


def sequence_lengths(x: Tensor, min_len: int, max_len: int) -> Tensor:
    """Per example, a length in ``[min_len, max_len]`` that is a fixed function of the example's pixels (so the same
    example gets the same length in training, tuning and evaluation, whatever batch it is in) and spread uniformly:
    the pixels quantized to 0..255, weighted by (index mod 7) + 1 and summed in integers (exact, no rounding),
    modulo the number of lengths. ``x``: ``(N, ...)`` with values in [0, 1]; returns ``(N,)`` int64."""
    q = torch.round(x.detach().reshape(x.shape[0], -1).clamp(0, 1) * 255).to(torch.int64)
    weights = torch.arange(q.shape[1], device=x.device) % 7 + 1
    return min_len + (q * weights).sum(1) % (max_len - min_len + 1)


def resample_rows(rows: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Stretch each sequence of ``rows`` ``(N, T, F)`` to its own length ``lengths[i]`` (2 <= L <= T) by linear
    interpolation over time (step t of L reads position t (T - 1) / (L - 1) of the T rows: the whole sequence at
    another speed), zero-padded at the end to T. Returns ``(padded (N, T, F), mask (N, T) bool, True = valid)``."""
    n, steps = rows.shape[0], rows.shape[1]
    t = torch.arange(steps, device=rows.device, dtype=rows.dtype)
    pos = (t[None, :] * (steps - 1) / (lengths[:, None].to(rows.dtype) - 1)).clamp(0, steps - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=steps - 1)
    w = (pos - lo.to(rows.dtype))[..., None]
    index = lo[..., None].expand(n, steps, rows.shape[2])
    out = rows.gather(1, index) * (1 - w) + rows.gather(1, hi[..., None].expand_as(index)) * w
    mask = t[None, :] < lengths[:, None]
    return out * mask[..., None].to(rows.dtype), mask


class _SequenceRNN(nn.Module):
    """A tanh RNN over zero-padded variable-length sequences, the normalization on the input-to-hidden term with
    statistics pooled over the batch *and* time (the sequence-wise BN of Laurent et al. 2016, arXiv:1510.01378):

        z = N(W_x x)  over every position of the padded batch,    h_t = tanh(z_t + W_h h_{t-1} + b),

    the classifier reading the hidden state at each sequence's last valid step (so padded steps reach the output
    only through the statistics of N). ``norm``: "bn" (BatchNorm over every position, padding included: what a
    padded batch gives a plain BN layer), "masked" (:class:`~normlab.nn.MaskedBatchNorm`: valid positions only),
    "brn" (Batch Renormalization over every position), "ln" (LayerNorm over the hidden units of each position:
    per example and step, padding-free by construction), "wn" (weight normalization of W_x and W_h, no activation
    norm), "none"."""

    def __init__(self, features: int, hidden: int, num_classes: int, norm: str, norm_kw: dict, min_len: int,
                 max_len: int) -> None:
        super().__init__()
        self.hidden, self.min_len, self.max_len, self.norm_name = hidden, min_len, max_len, norm
        self.w_x = nn.Linear(features, hidden, bias=False)
        self.w_h = nn.Linear(hidden, hidden, bias=False)
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.norm: nn.Module = nn.Identity() if norm in ("wn", "none") else norm_layer(norm, hidden, **norm_kw)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, rows: Tensor) -> Tensor:
        n, steps = rows.shape[0], rows.shape[1]
        seq, mask = resample_rows(rows, sequence_lengths(rows, self.min_len, self.max_len))
        z = self.w_x(seq).reshape(n * steps, self.hidden)
        z = self.norm(z, mask=mask.reshape(-1)) if self.norm_name == "masked" else self.norm(z)
        z = z.reshape(n, steps, self.hidden) + self.bias
        h = rows.new_zeros(n, self.hidden)
        hs = []
        for t in range(steps):
            h = torch.tanh(z[:, t] + self.w_h(h))
            hs.append(h)
        last = mask.sum(1) - 1  # each sequence's last valid step
        return self.head(torch.stack(hs, 1)[torch.arange(n, device=rows.device), last])


def seq_rnn(input_shape: Sequence[int], num_classes: int, *, norm: str = "bn", hidden: int = 64, min_len: int = 7,
            pool: int = 1, init: str = "xavier", norm_kw: dict | None = None) -> nn.Module:
    """A variable-length sequence classifier (see ``_SequenceRNN``): images ``(C, H, W)`` are read row by row (H
    rows of C*W features), each example stretched in time to its own length L in ``[min_len, H]``
    (:func:`sequence_lengths`, :func:`resample_rows`) and zero-padded to H, as a padded batch of sequences of
    different lengths is. ``pool`` > 1 first averages ``pool`` x ``pool`` pixel blocks (H/pool rows of
    C*W/pool features: shorter sequences, cheaper steps). ``norm``: one of :data:`SEQUENCE_NORMS`; ``init``
    (Glorot, "xavier", is the standard init for tanh) applies to W_x and the classifier, W_h starts orthogonal (Saxe
    et al. 2014). Raises ValueError for another norm, an input that is not an image, or ``min_len`` outside [2, H]."""
    _check_choice("seq_rnn", "norm", norm, SEQUENCE_NORMS)
    _check_choice("seq_rnn", "init", init, INITS)
    if len(input_shape) != 3:
        raise ValueError(f"seq_rnn: expected an image input_shape (C, H, W), got {tuple(input_shape)}")
    if not (isinstance(pool, int) and not isinstance(pool, bool) and 1 <= pool <= min(input_shape[1:])):
        raise ValueError(f"seq_rnn: expected pool as an int from 1 to {min(input_shape[1:])}, got {pool!r}")
    steps = int(input_shape[1]) // pool
    if not (isinstance(min_len, int) and not isinstance(min_len, bool) and 2 <= min_len <= steps):
        raise ValueError(f"seq_rnn: expected min_len as an int from 2 to {steps} (the rows), got {min_len!r}")
    if not (isinstance(hidden, int) and not isinstance(hidden, bool) and hidden >= 1):
        raise ValueError(f"seq_rnn: expected hidden as an int >= 1, got {hidden!r}")
    net = _SequenceRNN(input_shape[0] * (input_shape[2] // pool), hidden, num_classes, norm, norm_kw or {}, min_len,
                       steps)
    init_weights(net, init)
    nn.init.orthogonal_(net.w_h.weight)
    if norm == "wn":
        _apply_weight_norm([net.w_x, net.w_h])  # after the init: the parametrization starts from it
    pre: list[nn.Module] = [nn.AvgPool2d(pool)] if pool > 1 else []
    return nn.Sequential(*pre, _RowsAsSequence(), net)


# -------------------------------------------------------------------------------------------------------- registry
MODELS: dict[str, Callable[..., nn.Module]] = {
    "seed_mlp": seed_mlp,
    "ioffe_mlp": ioffe_mlp,
    "mlp": mlp,
    "cnn": cnn,
    "resnet": resnet,
    "rnn": rnn,
    "seq_rnn": seq_rnn,
}


def model_options(name: str) -> dict[str, object]:
    """The keyword options of model ``name`` with their defaults (``norm`` included)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    sig = inspect.signature(MODELS[name])
    return {k: p.default for k, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, *, norm: str = "bn", **options
) -> nn.Module:
    """Build model ``name`` (see :data:`MODELS`) for inputs ``input_shape`` and ``num_classes`` outputs."""
    allowed = model_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"model {name!r}: unknown option(s) {unknown}; expected some of {sorted(allowed)}")
    return MODELS[name](tuple(input_shape), int(num_classes), norm=norm, **options)
