"""Probes: what a run measures besides its loss curves, declared in ``TrainConfig.probes`` and run by the engine.

``TrainConfig.probes`` maps a name of your choice to a JSON-able spec ``{"kind": KIND, <options>}``; the run's
``RunResult.probes[name]`` holds what that probe measured (JSON-able too: lists and dicts of numbers and strings).
Probes never change the run: they measure on copies, or restore every parameter, buffer and torch's random state
they touch, and the activation recorder's training-step hooks are paused while another probe runs forward passes.

Schedules (kinds with ``every``): at step 0 (``first``), at every ``every``-th optimizer step (0 = none), and
after the last step (``last``; at a divergence, the last good step). "At step s" means with the weights after s
updates (before the engine's evaluation at that step).

Kinds:

``activations`` -- :class:`normlab.tools.ActivationRecorder.observe` on a fixed probe input: the first ``n``
    examples (None: all) of the ``data`` split ("val" or "train"), in ``mode`` "eval" or "train" (training mode:
    batch statistics, dropout and injected noise as the next layer sees them while it trains; buffers and random
    state restored). ``layers``: "activations" (activation modules: their input is the pre-activation), "norms"
    (normalization layers), "weights" (Linear/Conv layers) or a list of module names; ``index`` picks some of them
    (e.g. ``[-1]``: the last). ``stats``: some of :data:`normlab.tools.record.STATS`. Result: ``{"layers": [...],
    "steps": [...], <stat field>: [[value per layer] per step]}``.
``gradients`` -- the recorder hooked on the training steps themselves: every ``every``-th training forward
    (step k = the forward after k updates, on that step's mini-batch) the L2 norm of the gradient of each watched
    layer's weight (``weight_grad_norm``) and input (``grad_norm``). ``layers``/``index`` as above (default
    "weights"). Result as for ``activations``; a step whose loss diverged is dropped.
``landscape`` -- Santurkar et al. (2018)'s loss-landscape measures on the current mini-batch (step 0: the first
    ``batch_size`` training examples): moving every parameter along the negative gradient by each eta of ``etas``,
    the range of the loss and the largest change of the gradient (L2 over all parameters), in training mode.
    Result: ``{"steps": [...], "loss_range": [...], "grad_change": [...]}``.
``ics`` -- Santurkar et al. (2018, arXiv:1805.11604, Sec. 3)'s gradient-based internal covariate shift of each
    watched layer ``i`` (``layers``/``index`` as for ``activations``, default "weights") on the current mini-batch
    (step 0: the first ``batch_size`` training examples), in training mode: G = the gradient of the loss with
    respect to the layer's weight, G' = the same gradient after every parameter registered before that weight (the
    earlier layers, their norms' affine parameters included) took one gradient-descent step of size ``eta`` (None:
    the run's ``lr``) while the layer and everything after it stay put; ``ics_l2`` = ||G - G'||_2 and ``ics_cos``
    = cos(G, G') (1.0 when either is zero). Each layer's G' is computed from the same unshifted weights; dropout
    and noise draw the same random numbers in every forward. Result: ``{"layers", "steps", "ics_l2": [[per layer]
    per step], "ics_cos": [[...]]}``. The computation is :func:`ics_gradient_change`.
``eval_train`` -- at every evaluation of the engine, eval-mode loss and accuracy on the first ``n`` training
    examples (None: all). Result: ``{"steps", "loss", "acc"}``.
``eval_modes`` -- validation accuracy of a copy of the model evaluated each way of ``modes``: "running" (the
    running statistics), "recalibrated" (:func:`normlab.tools.recalibrate` on the first ``recalibrate_n`` training
    examples in batches of ``recalibrate_batch``), "batch-<B>" (batch statistics of evaluation batches of B: every
    layer with ``eval_stats`` set to "batch"). Result: ``{"steps": [...], <mode>: [...]}``.
``population`` -- validation loss and accuracy of a copy whose batch norms (per-time-step ones included) hold the
    statistics :func:`normlab.tools.recalibrate` computes over whole batches of ``batch`` (default: the run's
    batch size) of the first ``n`` training examples (None: all), averaged as ``average`` says ("batches":
    Cooijmans et al.'s mean of mini-batch estimates; "pooled"); a model without batch norm is evaluated as it is.
    Result: ``{"steps", "val_loss", "val_acc"}``.
``latency`` -- after training: eval-mode CPU latency (ms per batch, median over ``rounds`` interleaved rounds of
    ``inner`` calls each, after 3 warm-up calls; variant order rotated every round so machine load hits all alike)
    of the ``variants``: "trained" (the run's model), "folded" (``normlab.tools.fold_batchnorm`` of it), "reference"
    (the same builder with ``reference`` = ``{"norm": ..., "model_args": {...}}`` overriding the run's, untrained),
    on the first B validation examples for each B of ``batch_sizes``. Result: ``{"<B>": {variant: median ms},
    "<B>-all": {variant: [ms per round]}, "max_abs_diff_folded": float | None}``. With ``train_batch_sizes``
    (default none) also a training step's time: forward in training mode, cross-entropy, backward (gradients of a
    copy, set to None after each step: no weight moves) on the first B training examples, same rounds, of the
    variants other than "folded" (a folded net trains like the reference); ``"train-<B>"`` and
    ``"train-<B>-all"`` as above.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PROBES", "validate_probes", "Prober", "ics_gradient_change"]

_SCHEDULE = {"every": 0, "first": True, "last": True}
PROBES: dict[str, dict[str, Any]] = {
    "activations": {"layers": "activations", "index": None, "stats": None, "data": "val", "n": None, "mode": "eval",
                    **_SCHEDULE},
    "gradients": {"layers": "weights", "index": None, "every": 1},
    "landscape": {"etas": [0.25, 0.5, 1.0, 2.0], **_SCHEDULE},
    "ics": {"layers": "weights", "index": None, "eta": None, **_SCHEDULE},
    "eval_train": {"n": None},
    "eval_modes": {"modes": ["running", "recalibrated", "batch-1000", "batch-8"], "recalibrate_n": 2000,
                   "recalibrate_batch": 200, **_SCHEDULE},
    "population": {"n": None, "batch": None, "average": "batches", **_SCHEDULE},
    "latency": {"batch_sizes": [1, 32], "rounds": 30, "inner": 5, "variants": ["trained", "folded", "reference"],
                "reference": {"norm": "none", "model_args": {}}, "train_batch_sizes": []},
}
SELECTORS = ("activations", "norms", "weights")


def _int(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def validate_probes(probes: Any) -> None:
    """Raise ValueError naming the probe, the option, what is allowed and what arrived."""
    if not isinstance(probes, dict):
        raise ValueError(f"TrainConfig: probes={probes!r} is not allowed; expected a table (dict) name -> probe spec")
    for name, spec in probes.items():
        where = f"TrainConfig.probes[{name!r}]"
        if not isinstance(spec, dict) or spec.get("kind") not in PROBES:
            got = spec.get("kind") if isinstance(spec, dict) else spec
            raise ValueError(f"{where}: expected a table with kind one of {sorted(PROBES)}, got {got!r}")
        allowed = PROBES[spec["kind"]]
        unknown = sorted(set(spec) - set(allowed) - {"kind"})
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {unknown} for kind {spec['kind']!r}; expected some of "
                             f"{sorted(allowed)}")

        def bad(key: str, expected: str, where: str = where, spec: dict = spec) -> None:
            raise ValueError(f"{where}: {key}={spec[key]!r} is not allowed; expected {expected}")

        for key in ("every",):
            if key in spec and not _int(spec[key], 0):
                bad(key, "an int >= 0")
        for key in ("first", "last"):
            if key in spec and not isinstance(spec[key], bool):
                bad(key, "true or false")
        for key in ("n", "batch"):
            if spec.get(key) is not None and not _int(spec[key], 1):
                bad(key, "an int >= 1 or None")
        for key in ("rounds", "inner", "recalibrate_n", "recalibrate_batch"):
            if key in spec and not _int(spec[key], 1):
                bad(key, "an int >= 1")
        if "layers" in spec:
            v = spec["layers"]
            if not (v in SELECTORS or (isinstance(v, list) and v and all(isinstance(s, str) for s in v))):
                bad("layers", f"one of {list(SELECTORS)} or a list of module names")
        if spec.get("index") is not None and not (
                isinstance(spec["index"], list) and all(isinstance(i, int) for i in spec["index"])):
            bad("index", "a list of ints (positions in the selected layers) or None")
        if spec.get("stats") is not None:
            from ..tools.record import STATS

            if not (isinstance(spec["stats"], list) and set(spec["stats"]) <= set(STATS)):
                bad("stats", f"a list of some of {list(STATS)}")
        if "data" in spec and spec["data"] not in ("val", "train"):
            bad("data", "'val' or 'train'")
        if "mode" in spec and spec["mode"] not in ("eval", "train"):
            bad("mode", "'eval' or 'train'")
        if "average" in spec and spec["average"] not in ("batches", "pooled"):
            bad("average", "'batches' or 'pooled'")
        if spec.get("eta") is not None and not (isinstance(spec["eta"], (int, float)) and not isinstance(
                spec["eta"], bool) and math.isfinite(spec["eta"]) and spec["eta"] > 0):
            bad("eta", "a positive number or None (the run's lr)")
        if "etas" in spec and not (isinstance(spec["etas"], list) and spec["etas"] and all(
                isinstance(e, (int, float)) and math.isfinite(e) and e > 0 for e in spec["etas"])):
            bad("etas", "a non-empty list of positive numbers")
        if "modes" in spec:
            ok = isinstance(spec["modes"], list) and spec["modes"] and all(
                m in ("running", "recalibrated") or (isinstance(m, str) and m.startswith("batch-")
                                                     and m[6:].isdigit() and int(m[6:]) >= 2) for m in spec["modes"])
            if not ok:
                bad("modes", "a list of 'running', 'recalibrated', 'batch-<int >= 2>'")
        if "batch_sizes" in spec and not (isinstance(spec["batch_sizes"], list) and spec["batch_sizes"]
                                          and all(_int(b, 1) for b in spec["batch_sizes"])):
            bad("batch_sizes", "a non-empty list of ints >= 1")
        if "train_batch_sizes" in spec and not (isinstance(spec["train_batch_sizes"], list)
                                                and all(_int(b, 2) for b in spec["train_batch_sizes"])):
            bad("train_batch_sizes", "a list of ints >= 2 (batch statistics need two examples)")
        if "variants" in spec and not (isinstance(spec["variants"], list) and spec["variants"]
                                       and set(spec["variants"]) <= {"trained", "folded", "reference"}):
            bad("variants", "a non-empty list of 'trained', 'folded', 'reference'")
        if "reference" in spec:
            ref = spec["reference"]
            if not (isinstance(ref, dict) and set(ref) <= {"norm", "model_args"}
                    and isinstance(ref.get("norm", "none"), str) and isinstance(ref.get("model_args", {}), dict)):
                bad("reference", "a table with 'norm' (a make_norm spec) and 'model_args' (a table)")


# ------------------------------------------------------------------------------------------------------ running
def _select(model: nn.Module, layers, index) -> list[str]:
    from ..tools._common import is_norm
    from ..tools.record import ACTIVATION_MODULES

    named = dict(model.named_modules())
    if isinstance(layers, list):
        names = list(layers)
    elif layers == "activations":
        names = [n for n, m in named.items() if isinstance(m, ACTIVATION_MODULES)]
    elif layers == "norms":
        names = [n for n, m in named.items() if n and is_norm(m)]
    else:
        names = [n for n, m in named.items() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if index is not None:
        try:
            names = [names[i] for i in index]
        except IndexError:
            raise ValueError(f"probe: index {index} is out of range for the {len(names)} selected layers "
                             f"{names}") from None
    if not names:
        raise ValueError(f"probe: the model has no layer matching layers={layers!r}")
    return names


def _by_step(records, names: list[str], fields: list[str]) -> dict:
    steps = sorted({r.step for r in records})
    out: dict[str, Any] = {"layers": names, "steps": steps}
    table = {(r.step, r.layer): r for r in records}
    for f in fields:
        out[f] = [[getattr(table[(s, n)], f) if (s, n) in table else None for n in names] for s in steps]
    return out


def _fields(stats) -> list[str]:
    from ..tools.record import DEFAULT_STATS

    names = {"moments": ["mean", "std"], "percentiles": ["p15", "p50", "p85"], "dead": ["dead_fraction"],
             "unit_percentiles": ["unit_percentiles"], "variance_shift": ["variance_shift"]}
    return [f for s in (stats if stats is not None else DEFAULT_STATS) for f in names[s]]


class Prober:
    """Runs the probes of one run; :func:`normlab.lab.train.train` drives it (see the module docstring)."""

    def __init__(self, config, model: nn.Module, dataset, evaluate: Callable[..., tuple[float, float]]) -> None:
        from ..tools import ActivationRecorder

        self.config, self.model, self.ds = config, model, dataset
        # the engine's evaluate (lab.train), passed in so that probes never import the engine that runs them
        self.evaluate = evaluate
        self.specs = {k: {**PROBES[v["kind"]], **v} for k, v in config.probes.items()}
        self.results: dict[str, Any] = {}
        self.recorders: dict[str, Any] = {}
        self.done: dict[str, set] = {k: set() for k in self.specs}
        for name, spec in self.specs.items():
            kind = spec["kind"]
            if kind == "gradients":
                self.recorders[name] = ActivationRecorder(
                    model, _select(model, spec["layers"], spec["index"]), every=spec["every"], stats=(), grads=True)
            elif kind == "activations":
                self.recorders[name] = ActivationRecorder(
                    model, _select(model, spec["layers"], spec["index"]),
                    stats=spec["stats"] if spec["stats"] is not None else None, grads=False)
        self._stack = contextlib.ExitStack()

    # -- the engine's hook points --------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            for name, spec in self.specs.items():
                if spec["kind"] == "gradients":
                    self._stack.enter_context(self.recorders[name])
            self._at(0, None, None, first=True)
        except BaseException:
            self.close()  # no hook stays on the model
            raise

    def step(self, step: int, x, y) -> None:
        self._at(step, x, y)

    def on_eval(self, step: int) -> None:
        for name, spec in self.specs.items():
            if spec["kind"] == "eval_train":
                n = spec["n"] or len(self.ds.y_train)
                with self._quiet():
                    loss, acc = self.evaluate(self.model, self.ds.x_train[:n], self.ds.y_train[:n],
                                         self.config.eval_batch_size)
                r = self.results.setdefault(name, {"steps": [], "loss": [], "acc": []})
                r["steps"].append(step)
                r["loss"].append(loss)
                r["acc"].append(acc)

    def finish(self, step: int, diverged_step: int | None) -> dict:
        self._at(step, None, None, last=True)
        for name, spec in self.specs.items():
            if spec["kind"] == "latency":
                with self._quiet():
                    self.results[name] = self._latency(spec)
        self.close()
        for name, spec in self.specs.items():
            if spec["kind"] == "gradients":
                records = self.recorders[name].records
                if diverged_step is not None:  # forward k is optimizer step k + 1; the diverged one is dropped
                    records = [r for r in records if r.step < diverged_step - 1]
                self.results[name] = _by_step(records, self.recorders[name].layers, ["weight_grad_norm", "grad_norm"])
            elif spec["kind"] == "activations":
                self.results[name] = _by_step(self.recorders[name].records, self.recorders[name].layers,
                                              _fields(spec["stats"]))
        return {k: self.results.get(k, {}) for k in self.specs}

    def close(self) -> None:
        self._stack.close()

    # -- helpers ---------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _quiet(self):
        """Pause the training-step recorders and put torch's random state back: the probe leaves no trace."""
        rng = torch.get_rng_state()
        with contextlib.ExitStack() as stack:
            for name, spec in self.specs.items():
                if spec["kind"] == "gradients":
                    stack.enter_context(self.recorders[name].paused())
            try:
                yield
            finally:
                torch.set_rng_state(rng)

    def _due(self, name: str, spec: dict, step: int, first: bool, last: bool) -> bool:
        if step in self.done[name]:
            return False
        if first:
            return spec["first"]
        if last:
            return spec["last"]
        return bool(spec["every"]) and step % spec["every"] == 0

    def _at(self, step: int, x, y, first: bool = False, last: bool = False) -> None:
        for name, spec in self.specs.items():
            kind = spec["kind"]
            if kind not in ("activations", "landscape", "eval_modes", "population", "ics"):
                continue
            if not self._due(name, spec, step, first, last):
                continue
            self.done[name].add(step)
            with self._quiet():
                if kind == "activations":
                    src = self.ds.x_val if spec["data"] == "val" else self.ds.x_train
                    self.recorders[name].observe(src[: spec["n"]], step=step, train=spec["mode"] == "train")
                elif kind in ("landscape", "ics"):
                    if x is None:
                        x, y = self.ds.x_train[: self.config.batch_size], self.ds.y_train[: self.config.batch_size]
                    if kind == "landscape":
                        self._landscape(name, spec, step, x, y)
                    else:
                        self._ics(name, spec, step, x, y)
                elif kind == "eval_modes":
                    self._eval_modes(name, spec, step)
                else:
                    self._population(name, spec, step)

    def _landscape(self, name: str, spec: dict, step: int, x, y) -> None:
        m = self.model
        saved = copy.deepcopy(m.state_dict())
        was = m.training
        try:
            m.train()
            params = [p for p in m.parameters() if p.requires_grad]
            base = [p.detach().clone() for p in params]
            loss0 = F.cross_entropy(m(x), y)
            g0 = torch.autograd.grad(loss0, params)
            losses, changes = [loss0.item()], []
            for eta in spec["etas"]:
                with torch.no_grad():
                    for p, g, b in zip(params, g0, base):
                        p.copy_(b - eta * g)
                loss = F.cross_entropy(m(x), y)
                g1 = torch.autograd.grad(loss, params)
                losses.append(loss.item())
                changes.append(float(torch.sqrt(sum((((a - b) ** 2).sum() for a, b in zip(g1, g0)), torch.zeros(())))))
        finally:
            m.load_state_dict(saved)
            m.train(was)
        r = self.results.setdefault(name, {"steps": [], "loss_range": [], "grad_change": []})
        r["steps"].append(step)
        r["loss_range"].append(max(losses) - min(losses))
        r["grad_change"].append(max(changes))

    def _ics(self, name: str, spec: dict, step: int, x, y) -> None:
        names = _select(self.model, spec["layers"], spec["index"])
        eta = spec["eta"] if spec["eta"] is not None else self.config.lr
        l2, cos = ics_gradient_change(self.model, x, y, names, eta)
        r = self.results.setdefault(name, {"layers": names, "steps": [], "ics_l2": [], "ics_cos": []})
        r["steps"].append(step)
        r["ics_l2"].append(l2)
        r["ics_cos"].append(cos)

    def _train_step_times(self, variants: dict, b: int, spec: dict) -> tuple[dict, dict]:
        """Median ms of forward (training mode) + cross-entropy + backward per variant, interleaved rounds, on
        copies (the run's model, its buffers and gradients are untouched)."""
        x, y = self.ds.x_train[:b], self.ds.y_train[:b]
        copies = {k: copy.deepcopy(m).train() for k, m in variants.items()}
        names = list(copies)

        def one(m: nn.Module) -> None:
            F.cross_entropy(m(x), y).backward()
            for p in m.parameters():
                p.grad = None

        times: dict[str, list[float]] = {v: [] for v in names}
        for v in names:
            for _ in range(3):  # warm-up
                one(copies[v])
        for rnd in range(spec["rounds"]):
            k = rnd % len(names)
            for v in names[k:] + names[:k]:
                t0 = time.perf_counter()
                for _ in range(spec["inner"]):
                    one(copies[v])
                times[v].append((time.perf_counter() - t0) / spec["inner"] * 1e3)
        return {v: sorted(t)[len(t) // 2] for v, t in times.items()}, times

    def _eval_modes(self, name: str, spec: dict, step: int) -> None:
        from ..nn import BatchNormBase
        from ..tools import recalibrate
        r = self.results.setdefault(name, {"steps": [], **{mode: [] for mode in spec["modes"]}})
        r["steps"].append(step)
        ds = self.ds
        for mode in spec["modes"]:
            m = copy.deepcopy(self.model)
            batch = self.config.eval_batch_size
            if mode == "recalibrated":
                n, b = spec["recalibrate_n"], spec["recalibrate_batch"]
                recalibrate(m, [ds.x_train[i:i + b] for i in range(0, min(n, len(ds.y_train)), b)], progress=False)
            elif mode.startswith("batch-"):
                batch = int(mode[6:])
                for mod in m.modules():
                    if isinstance(mod, BatchNormBase):  # the layers with eval_stats
                        mod.eval_stats = "batch"
            r[mode].append(self.evaluate(m, ds.x_val, ds.y_val, batch)[1])

    def _population(self, name: str, spec: dict, step: int) -> None:
        from ..tools import recalibrate
        from ..tools._common import has_running_stats, is_batch_norm
        ds = self.ds
        m = copy.deepcopy(self.model)
        if any(is_batch_norm(mod) and has_running_stats(mod) for mod in m.modules()):
            b = spec["batch"] or self.config.batch_size
            n = min(spec["n"] or len(ds.y_train), len(ds.y_train))
            if n < b:
                raise ValueError(f"probe {name!r}: expected at least one whole batch of {b} among the first {n} "
                                 "training examples")
            recalibrate(m, [ds.x_train[i:i + b] for i in range(0, n - b + 1, b)], progress=False,
                        average=spec["average"])
        loss, acc = self.evaluate(m, ds.x_val, ds.y_val, self.config.eval_batch_size)
        r = self.results.setdefault(name, {"steps": [], "val_loss": [], "val_acc": []})
        r["steps"].append(step)
        r["val_loss"].append(loss)
        r["val_acc"].append(acc)

    def _latency(self, spec: dict) -> dict:
        from .models import build_model

        ds, cfg = self.ds, self.config
        variants: dict[str, nn.Module] = {}
        for v in spec["variants"]:
            if v == "trained":
                variants[v] = self.model
            elif v == "folded":
                from ..tools import fold_batchnorm

                variants[v] = fold_batchnorm(copy.deepcopy(self.model).eval())
            else:
                ref = spec["reference"]
                args = {**cfg.model_args, **ref.get("model_args", {})}
                variants[v] = build_model(cfg.model, ds.input_shape, ds.num_classes, norm=ref.get("norm", "none"),
                                          **args)
        modes = {k: m.training for k, m in variants.items()}
        for m in variants.values():
            m.eval()
        out: dict[str, Any] = {"max_abs_diff_folded": None}
        names = list(variants)
        try:
            if "folded" in variants and "trained" in variants:
                with torch.no_grad():
                    x = ds.x_val[:64]
                    diff = (variants["folded"](x) - variants["trained"](x)).abs().max()
                    out["max_abs_diff_folded"] = float(diff)
            for b in spec["batch_sizes"]:
                x = ds.x_val[:b]
                times: dict[str, list[float]] = {v: [] for v in names}
                with torch.inference_mode():
                    for v in names:
                        for _ in range(3):  # warm-up
                            variants[v](x)
                    for rnd in range(spec["rounds"]):
                        start = rnd % len(names)
                        for v in names[start:] + names[:start]:
                            t0 = time.perf_counter()
                            for _ in range(spec["inner"]):
                                variants[v](x)
                            times[v].append((time.perf_counter() - t0) / spec["inner"] * 1e3)
                out[str(b)] = {v: sorted(t)[len(t) // 2] for v, t in times.items()}  # upper median
                out[f"{b}-all"] = times
            for b in spec["train_batch_sizes"]:
                out[f"train-{b}"], out[f"train-{b}-all"] = self._train_step_times(
                    {k: m for k, m in variants.items() if k != "folded"}, b, spec)
        finally:
            for k, m in variants.items():
                m.train(modes[k])
        return out


# ------------------------------------------------------------------------------------------- gradient-based ICS


def ics_gradient_change(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: list[str],
                        eta: float) -> tuple[list[float], list[float]]:
    """Santurkar et al. (2018, arXiv:1805.11604, Sec. 3, Definition 2.1)'s internal covariate shift of each layer of
    ``layers`` (module names, each with a ``weight``) on the batch ``(x, y)`` (inputs ``(N, ...)``, int labels
    ``(N,)``), cross-entropy loss, in training mode: ``(||G - G'||_2 per layer, cos(G, G') per layer)`` where G is
    the gradient of the loss with respect to the layer's weight and G' the same gradient after every trainable
    parameter registered before that weight took one step ``p - eta * dL/dp`` (the gradients at the unshifted
    weights), the layer and the later parameters unchanged.

    The model is left as it was: parameters, buffers (running statistics), training flag and torch's random state
    are restored; every forward draws the same random numbers (dropout, noise). Raises ValueError for a name that
    is not a module with a trainable ``weight`` or a non-positive ``eta``.
    """
    if not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"ics_gradient_change: expected eta > 0, got {eta!r}")
    modules = dict(model.named_modules())
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    position = {id(p): k for k, (_, p) in enumerate(named)}
    targets = []
    for layer in layers:
        w = getattr(modules.get(layer), "weight", None)
        if not isinstance(w, torch.Tensor) or id(w) not in position:
            raise ValueError(f"ics_gradient_change: layer {layer!r} is not a module of the model with a trainable "
                             "weight")
        targets.append(position[id(w)])
    params = [p for _, p in named]
    saved = copy.deepcopy(model.state_dict())
    was = model.training
    rng = torch.get_rng_state()
    l2: list[float] = []
    cos: list[float] = []
    try:
        model.train()
        base = [p.detach().clone() for p in params]
        g0 = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        for k in targets:
            with torch.no_grad():
                for j, p in enumerate(params):
                    p.copy_(base[j] - eta * g0[j] if j < k else base[j])
            torch.set_rng_state(rng)
            (g1,) = torch.autograd.grad(F.cross_entropy(model(x), y), [params[k]])
            a, b = g0[k].double().flatten(), g1.double().flatten()
            l2.append(float(torch.linalg.vector_norm(a - b)))
            na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
            cos.append(float(a @ b / (na * nb)) if na > 0 and nb > 0 else 1.0)
    finally:
        model.load_state_dict(saved)
        model.train(was)
        torch.set_rng_state(rng)
    return l2, cos
