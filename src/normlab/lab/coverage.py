"""Coverage: every testable sentence of the five seed articles, and what in normlab answers it.

Each :class:`Entry` quotes a sentence verbatim (article, line; see :mod:`normlab.lab.corrections` for the files)
and names its answers, each one of:

- ``claim:<id>`` -- a lab claim (``normlab claims``); ids in :data:`PLANNED_CLAIMS` are announced but not
  registered yet: the table marks them "planned" (none now: every claim issue 13 fixed is registered);
- ``feature:<dotted.name>`` -- a normlab layer, function or tool (it must import);
- ``correction:<id>`` -- an item of the Corrections section, with its demonstration;

or, when nothing can answer it, ``not_testable`` with the reason. ``coverage_table()`` is what the report stores in
``results.json`` ``meta.coverage`` and shows as a table; ``problems()`` lists every answer that names nothing
(``tests/lab/test_coverage.py`` asserts there is none).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from .corrections import Sentence, correction_ids

__all__ = ["Entry", "ENTRIES", "PLANNED_CLAIMS", "ISSUE_13_CLAIMS", "coverage_table", "problems", "resolve_feature",
           "summary",
           "planned_in_use"]

# The claim ids issue 13 fixes; every one is registered now (tests/lab/test_coverage.py checks it).
ISSUE_13_CLAIMS = frozenset({
    "deep-networks", "sigmoid-saturation", "alternatives-regularize", "replaces-dropout", "alpha-dropout",
    "full-normalization", "sequence-normalization", "running-average-normalization", "activation-placement",
    "lr-sensitivity", "training-overhead",
})
# Claim ids announced but not registered yet (the table marks them "planned"): none are left. A future issue that
# announces a claim before its file lands lists the id here.
PLANNED_CLAIMS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Entry:
    sentence: Sentence
    answers: tuple[str, ...] = ()
    not_testable: str = ""


def _e(article: str, line: int, text: str, *answers: str, not_testable: str = "") -> Entry:
    return Entry(Sentence(article, line, text), tuple(answers), not_testable)


ENTRIES: tuple[Entry, ...] = (
    # -- 000 Dagshub glossary ------------------------------------------------------------------------------------
    _e("000", 7, "It is a method for adaptive re-scaling of inputs that has been shown to lead to substantial "
                 "improvement in the speed, performance, and stability of artificial neural networks.",
       "claim:faster-convergence", "claim:higher-learning-rates"),
    _e("000", 9, "The method aims to reduce the internal covariate shift in training deep networks, making the "
                 "network training more efficient and stable.", "claim:covariate-shift"),
    _e("000", 22, "Batch Normalization as the name suggests, normalizes the output of a previous activation layer by "
                  "subtracting the batch mean and dividing by the batch standard deviation.",
       "claim:activation-placement", "feature:normlab.nn.BatchNorm1d"),
    _e("000", 22, "This ensures that the network always creates activations with the same distribution that we "
                  "desire throughout the training process.", "claim:covariate-shift"),
    _e("000", 24, "Batch Normalization also has a beneficial effect on the gradient flow through the network, by "
                  "reducing the dependence of gradients on the scale of the parameters or of their initial values.",
       "claim:vanishing-gradients", "claim:careless-init"),
    _e("000", 24, "This leads to higher learning rates and less careful initialization, and acts as a form of "
                  "regularization, in some cases eliminating the need for Dropout.",
       "claim:higher-learning-rates", "claim:careless-init", "claim:regularization", "claim:replaces-dropout"),
    _e("000", 28, "These are calculated for each activation in a mini-batch independently.",
       "feature:normlab.reference.batch_norm_forward", "feature:normlab.nn.BatchNorm1d"),
    _e("000", 30, "This produces activations that have zero mean and unit variance.",
       "feature:normlab.reference.batch_norm_forward", "feature:normlab.nn.BatchNorm1d"),
    _e("000", 38, "One of the primary advantages of Batch Normalization is that it allows for higher learning rates.",
       "claim:higher-learning-rates"),
    _e("000", 38, "Consequently, networks can be trained more robustly, and the learning rate hyperparameter becomes "
                  "less sensitive, making the optimization process smoother.", "claim:lr-sensitivity"),
    _e("000", 42, "It introduces a slight regularization effect by adding a bit of noise to the hidden layer "
                  "activations, akin to the noise introduced by Dropout.", "claim:regularization"),
    _e("000", 42, "As a result, networks utilizing Batch Norm can often rely less on Dropout, which can significantly "
                  "speed up training times without sacrificing performance.", "claim:replaces-dropout"),
    _e("000", 46, "Batch Normalization is implemented as a separate layer in the neural network, which can be "
                  "inserted after fully connected layers or convolutional layers, and before nonlinearity.",
       "claim:activation-placement", "feature:normlab.nn.NormAct"),
    _e("000", 48, "These are learned along with the original model parameters, and allow the layer to undo the "
                  "normalization if it is not beneficial.", "claim:bn-only-training"),
    _e("000", 52, "Batch Normalization is performed separately for each feature map in convolutional networks, not "
                  "across different feature maps.", "feature:normlab.nn.BatchNorm2d"),
    _e("000", 56, "This is because the statistics of each time step in a sequence can vary, and the sequence length "
                  "may also vary.", "claim:recurrent", "feature:normlab.nn.TimeStepBatchNorm",
       "feature:normlab.nn.MaskedBatchNorm"),
    _e("000", 56, "Applying Batch Normalization to recurrent neural networks is less straightforward than applying "
                  "it to feedforward networks.", "claim:recurrent"),
    _e("000", 58, "One approach is to compute the statistics not over the mini-batch, but over the entire training "
                  "set. This is known as Layer Normalization.", "correction:layer-norm-per-example"),
    _e("000", 58, "Another approach is to compute the statistics over the mini-batch and over time, which is known "
                  "as Batch Renormalization.", "correction:batch-renorm-not-over-time",
       "feature:normlab.nn.BatchRenorm", "feature:normlab.nn.TimeStepBatchNorm"),
    _e("000", 66, "Therefore, if Batch Normalization is applied after Dropout, it may not be able to accurately "
                  "normalize the activations.", "claim:dropout-order"),
    _e("000", 68, "One solution to this problem is to apply Batch Normalization before Dropout.",
       "claim:dropout-order"),
    _e("000", 68, "Another solution is to use a variant of Dropout that does not change the mean and variance, such "
                  "as Alpha Dropout.", "claim:alpha-dropout"),
    _e("000", 72, "Batch Normalization can be problematic when used with small mini-batches.", "claim:small-batches"),
    _e("000", 74, "This can be done by maintaining a running average of the mean and variance and using this running "
                  "average for normalization instead of the mini-batch statistics. This is known as Moving Average "
                  "Batch Normalization.", "correction:running-average-not-mabn", "claim:running-average-normalization",
       "feature:normlab.nn.RunningAverageNorm",
       "feature:normlab.nn.MovingAverageBatchNorm"),
    _e("000", 84, "Layer Normalization is a variant of Batch Normalization that normalizes the inputs across the "
                  "features instead of across the mini-batch.", "correction:layer-norm-per-example",
       "feature:normlab.nn.LayerNorm"),
    _e("000", 84, "This makes it independent of batch size, and therefore suitable for tasks where the mini-batch "
                  "size is small or varies.", "correction:layer-norm-per-example", "claim:small-batches"),
    _e("000", 86, "This means that the normalization does not introduce any noise into the training process, and the "
                  "training is more stable.", "correction:layer-norm-per-example"),
    _e("000", 86, "However, it also means that Layer Normalization does not have the regularizing effect of Batch "
                  "Normalization.", "claim:alternatives-regularize"),
    _e("000", 90, "Instance Normalization is a variant of Batch Normalization that normalizes the inputs across the "
                  "spatial dimensions of the input.", "feature:normlab.nn.InstanceNorm",
       "feature:normlab.reference.instance_norm_forward"),
    _e("000", 92, "However, it also means that Instance Normalization does not have the regularizing effect of Batch "
                  "Normalization, and may require additional regularization methods.",
       "claim:alternatives-regularize", "feature:normlab.nn.InstanceNorm"),
    _e("000", 96, "Group Normalization is a variant of Batch Normalization that divides the channels of the input "
                  "into groups, and normalizes each group independently.", "feature:normlab.nn.GroupNorm",
       "feature:normlab.reference.group_norm_forward"),
    _e("000", 98, "However, it also means that Group Normalization does not have the regularizing effect of Batch "
                  "Normalization, and may require additional regularization methods.",
       "claim:alternatives-regularize", "feature:normlab.nn.GroupNorm"),
    _e("000", 90, "This makes it suitable for tasks that involve spatial data, such as image processing and computer "
                  "vision.", not_testable="no task or metric is named; \"suitable\" has no measurable content"),
    # -- 001 personal blog ---------------------------------------------------------------------------------------
    _e("001", 9, "We normalize\u00a0(mean = 0, standard deviation = 1)\u00a0the output of a layer before applying the "
                 "activation function, and then feed it into the next layer in a neural network.",
       "claim:activation-placement"),
    _e("001", 13, "This problem is solved by normalizing the layer’s inputs over a mini-batch.",
       "claim:covariate-shift"),
    _e("001", 13, "This makes training slow and requires a very small learning rate and a good parameter "
                  "initialization.", "claim:covariate-shift", "claim:higher-learning-rates", "claim:careless-init"),
    _e("001", 15, "By normalizing the outputs of each layer, we can significantly deal with this issue.",
       "claim:vanishing-gradients"),
    _e("001", 17, "In traditional neural networks, if we use higher learning rate, we may face exploding gradient "
                  "issue.", "claim:higher-learning-rates", "claim:vanishing-gradients"),
    _e("001", 17, "But, if we normalize the output of each layer, we can safely use higher learning rate due to which "
                  "we can drastically reduce the training period.",
       "claim:higher-learning-rates", "claim:faster-convergence"),
    _e("001", 19, "But, with batch normalization, we can regulate the output of each hidden layer, which prevents "
                  "this issue in deep neural networks.", "claim:dying-relu"),
    _e("001", 21, "Batch normalization all provides some sort of regularization to the neural network which "
                  "increases the generalization capabilities on the network.", "claim:regularization"),
    # -- 002 machine-translated rewrite ---------------------------------------------------------------------------
    _e("002", 7, "Batch normalization is a strong approach for standardizing the inputs to layers in a neural "
                 "community, which addresses the problem of inner covariate shifts that may come up in deep neural "
                 "networks.", "claim:covariate-shift"),
    _e("002", 9, "With batch normalization, it’s attainable to coach deep networks with over 100 layers whereas "
                 "persistently accelerating the convergence of the mannequin.",
       "claim:deep-networks", "claim:faster-convergence"),
    _e("002", 9, "Moreover, batch normalization gives inherent regularization, which helps to stop overfitting.",
       "claim:regularization"),
    _e("002", 25, "This layer applies a linear transformation to the enter values, adopted by rescaling and "
                  "offsetting.", "correction:normalization-not-linear"),
    _e("002", 25, "The rescaling and offsetting parameters are discovered throughout coaching, they usually assist to "
                  "clean the loss perform, velocity up the coaching course of, and deal with inner covariate shifts.",
       "claim:covariate-shift", "claim:bn-only-training"),
    _e("002", 35, "The rescaling and offsetting steps add non-linearity to the community and forestall saturation of "
                  "the sigmoid capabilities within the community.",
       "correction:affine-is-linear", "claim:sigmoid-saturation"),
    _e("002", 55, "Right here, ε is a small fixed (e.g., 10^-5) added to the variance for numerical stability.",
       "feature:normlab.nn.BatchNorm1d"),
    _e("002", 76, "To include batch normalization, we first normalize the weighted sum (Σ(w_ij * x_j)) earlier than "
                  "making use of the activation perform.", "correction:bias-before-bn-cancelled"),
    _e("002", 78, "a_i = f(γ * x̂_i + β + b_i)\u00a0(6)", "correction:bias-before-bn-cancelled",
       "feature:normlab.tools.find_redundant_biases"),
    _e("002", 80, "The learnable parameters γ and β assist protect the non-linearity of the community and counteract "
                  "any potential saturation within the activation capabilities.",
       "correction:affine-is-linear", "claim:sigmoid-saturation"),
    _e("002", 86, "Batch normalization helps to hurry up the coaching course of by normalizing the hidden layer "
                  "activations and smoothing the loss perform.", "claim:faster-convergence", "claim:covariate-shift"),
    _e("002", 86, "It additionally permits for greater studying charges, which helps to hurry up the coaching course "
                  "of.", "claim:higher-learning-rates", "claim:faster-convergence"),
    _e("002", 92, "Within the unique paper by Sergey and Christian, it’s claimed that Batch Normalization reduces the "
                  "interior covariate shift of the community.", "claim:covariate-shift"),
    _e("002", 96, "Batch normalization makes weight initialization simpler by permitting us to be much less cautious "
                  "when selecting our preliminary beginning weights particularly when creating deeper networks.",
       "claim:careless-init"),
    _e("002", 100, "In some circumstances, it has been proven to work in addition to dropout, which is a typical "
                   "regularization approach.", "claim:replaces-dropout", "claim:regularization"),
    _e("002", 108, "The PyTorch framework gives torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, and "
                   "torch.nn.BatchNorm3dfor implementing batch normalization in 1D, 2D, and 3D networks, respectively.",
       "feature:normlab.nn.BatchNorm1d", "feature:normlab.nn.BatchNorm2d", "feature:normlab.nn.BatchNorm3d"),
    _e("002", 112, "When implementing batch normalization, it is important to set the enter vector measurement in line "
                   "with the variety of neurons or filters within the present hidden layer.",
       "feature:normlab.nn.BatchNorm1d", "feature:normlab.nn.BatchNorm2d"),
    _e("002", 121, "The layer maintains operating estimates of imply and variance throughout coaching (default "
                   "momentum: 0.1), that are used for normalization throughout analysis.",
       "claim:train-vs-inference", "feature:normlab.nn.BatchNorm2d"),
    _e("002", 127, "Whereas coaching, the layer makes use of the imply and customary deviation of the present batch.",
       "claim:train-vs-inference"),
    _e("002", 146, "if use_bn:", not_testable="Keras code, not normlab's: as printed, the `if use_bn:` branch adds "
                                              "the output layer and no BatchNormalization layer (line 147), so the "
                                              "\"with BN\" model has no BN; the comparison it means is the "
                                              "faster-convergence claim"),
    _e("002", 164, "We are able to observe Batch normalization results in quicker convergence and decrease validation "
                   "loss, showcasing the effectiveness in bettering the mannequin’s efficiency and generalization "
                   "capabilities.", "claim:faster-convergence", "claim:regularization",
       "claim:keras-seed-experiment"),
    _e("002", 183, "As an example, when the mini- batch measurement is just too small, often 1, it could actually "
                   "result in unsatisfactory outcomes.", "claim:small-batches"),
    _e("002", 183, "Furthermore, Batch normalization is extremely depending on the mini-batch measurement and may "
                   "converge to totally different options, which might influence the general efficiency of the "
                   "mannequin.", "claim:small-batches"),
    _e("002", 183, "To deal with this challenge, utilizing bigger batch sizes or different normalization strategies "
                   "like layer normalization or occasion normalization may be helpful.",
       "claim:small-batches", "feature:normlab.nn.LayerNorm", "feature:normlab.nn.InstanceNorm"),
    _e("002", 187, "In sequence fashions like RNNs, the enter varies in size, making it troublesome to use batch "
                   "normalization.", "claim:recurrent", "claim:sequence-normalization",
       "feature:normlab.nn.MaskedBatchNorm", "feature:normlab.lab.models.seq_rnn"),
    _e("002", 187, "To beat this problem, a number of normalization methods have been proposed, together with batch "
                   "renormalization, weight normalization, and layer normalization.",
       "claim:sequence-normalization", "claim:recurrent", "feature:normlab.nn.MaskedBatchNorm",
       "feature:normlab.lab.models.seq_rnn"),
    _e("002", 191, "Batch normalization could make it more durable to interpret the mannequin because it provides an "
                   "additional layer of complexity.",
       not_testable="interpretability is not defined by any measurable quantity in the article"),
    _e("002", 191, "To deal with this, different normalization methods that protect interpretability like "
                   "feature-wise normalization can be utilized.",
       not_testable="neither interpretability nor \"feature-wise normalization\" is defined"),
    _e("002", 195, "Batch normalization requires extra computations throughout each the ahead and backward passes, "
                   "leading to slower coaching and longer inference instances, particularly on low-power units like "
                   "cellphones.", "claim:training-overhead", "claim:inference-overhead"),
    _e("002", 195, "To deal with this, optimization methods like fused batch normalization that mix batch "
                   "normalization with different layers to scale back computation overhead can be utilized.",
       "claim:inference-overhead", "feature:normlab.tools.fold_batchnorm"),
    _e("002", 199, "BLN was discovered to have quicker convergence than conventional batch and layer normalization "
                   "strategies in each Convolutional and Recurrent Neural Networks.",
       "claim:batch-layer-norm", "feature:normlab.nn.BatchLayerNorm"),
    _e("002", 201, "One other recent paper proposed a refinement of Batch Normalization referred to as Full "
                   "Normalization (FN), which addresses points with Batch Normalization when batches are usually not "
                   "constructed ideally.", "claim:full-normalization", "feature:normlab.nn.FullNormalization"),
    _e("002", 203, "Lastly, researchers have additionally highlighted the significance of understanding the "
                   "limitations of Batch Normalization, comparable to poor efficiency when batch measurement is small "
                   "and dependence on supreme batch statistics.", "claim:small-batches", "claim:full-normalization"),
    _e("002", 203, "Corrected formulations of Batch Normalization have been proposed to deal with these points and "
                   "enhance inference efficiency.",
       not_testable="no formulation is named, so there is nothing specific to run (normlab.tools.recalibrate is one "
                    "such correction of inference statistics)"),
    # -- 003 notes after the original paper -----------------------------------------------------------------------
    _e("003", 5, "The main goal in batch normalization is to prevent the internal covariate shift within the layers "
                  "of the network by restricting the changes to each layer to a specific range.",
       "claim:covariate-shift"),
    _e("003", 7, "First the ``whitening’’ process is done for each feature independently of all the other features "
                 "to make it 0 have a 0 mean and variance of 1.", "feature:normlab.reference.batch_norm_forward"),
    _e("003", 5, "Complete normalization of the inputs to each layer is an expensive operation and requires "
                  "computing the covariate matrix.",
       not_testable="about whitening, which normlab does not implement; the cost argument is the paper's, not a "
                    "BN property"),
    _e("003", 5, "Since the input distribution of each layer does not change significantly when we use batch "
                  "normalization, it significantly speeds up the training process of neural networks while boosting "
                  "the performance of it.", "claim:covariate-shift", "claim:faster-convergence"),
    _e("003", 12, "The learned affine transform applied to these normalized activations allows the BN transform to "
                  "represent the identity transformation and preserves the network capacity.",
       "claim:bn-only-training", "correction:affine-is-linear"),
    # -- 004 Codemia --------------------------------------------------------------------------------------------
    _e("004", 7, "BatchNorm stabilizes these activations allowing deeper networks to converge faster and potentially "
                  "achieve better generalization.", "claim:covariate-shift", "claim:deep-networks"),
    _e("004", 8, "Faster Convergence: By normalizing the inputs to each layer, BatchNorm reduces the distribution "
                  "shift throughout the network, leading to faster training times.",
       "claim:faster-convergence", "claim:covariate-shift"),
    _e("004", 9, "Higher Learning Rates: BatchNorm allows the use of higher learning rates, which can accelerate "
                  "training and result in more effective optimization.", "claim:higher-learning-rates"),
    _e("004", 10, "Regularization Effect: Despite being primarily a normalization technique, BatchNorm also has a "
                  "regularization effect similar to dropout because it imparts some level of noise due to mini-batch "
                  "variations.", "claim:regularization"),
    _e("004", 20, "In Convolutional Neural Networks, BatchNorm can be applied in a similar manner where normalization "
                  "is performed across batches and spatial locations for each feature map.",
       "feature:normlab.nn.BatchNorm2d"),
    _e("004", 20, "It is typically applied after convolution and before activation.", "claim:activation-placement",
       "feature:normlab.nn.NormAct"),
    _e("004", 25, "Training with very small batch sizes can lead to noisy statistics which may destabilize training.",
       "claim:small-batches", "feature:normlab.nn.GhostBatchNorm"),
    _e("004", 27, "This ensures consistency in model behavior irrespective of batch size.",
       "claim:train-vs-inference"),
)


def resolve_feature(dotted: str) -> object:
    """Import ``normlab.x.y.Name`` and return the object; raises ImportError/AttributeError naming it."""
    module, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except AttributeError as exc:
        raise AttributeError(f"coverage: {dotted} does not exist ({exc})") from exc


def _registered_claims() -> set[str]:
    from .claims import claim_ids

    return set(claim_ids())


def _answer(ref: str, registered: set[str]) -> dict[str, Any]:
    kind, _, name = ref.partition(":")
    if kind == "claim":
        status = "existing" if name in registered else ("planned" if name in PLANNED_CLAIMS else "unknown")
    elif kind == "correction":
        status = "existing" if name in correction_ids() else "unknown"
    elif kind == "feature":
        try:
            resolve_feature(name)
            status = "existing"
        except (ImportError, AttributeError):
            status = "unknown"
    else:
        status = "unknown"
    return {"kind": kind, "ref": name, "status": status}


def coverage_table() -> list[dict[str, Any]]:
    """One dict per sentence: article, file, line, text, answers (kind, ref, status: existing | planned | unknown),
    not_testable (the reason, or "")."""
    registered = _registered_claims()
    return [{**e.sentence.to_dict(), "answers": [_answer(a, registered) for a in e.answers],
             "not_testable": e.not_testable} for e in ENTRIES]


def problems() -> list[str]:
    """Every entry that answers nothing, answers with something that does not exist, or both answers and is marked
    not testable; empty when the table is sound."""
    out = []
    for row in coverage_table():
        where = f"{row['file']}:{row['line']}"
        if bool(row["answers"]) == bool(row["not_testable"]):
            out.append(f"{where}: needs either answers or a not-testable reason, not both or neither")
        out += [f"{where}: {a['kind']}:{a['ref']} does not exist" for a in row["answers"] if a["status"] == "unknown"]
    return out


def summary(table: list[dict[str, Any]] | None = None) -> dict[str, int]:
    """Counts: sentences, answered by an existing claim, only by planned claims, by a correction, by a feature,
    not testable."""
    table = coverage_table() if table is None else table

    def has(row, kind, status="existing"):
        return any(a["kind"] == kind and a["status"] == status for a in row["answers"])

    return {
        "sentences": len(table),
        "existing_claim": sum(has(r, "claim") for r in table),
        "planned_claim_only": sum(has(r, "claim", "planned") and not any(
            a["status"] == "existing" for a in r["answers"]) for r in table),
        "correction": sum(has(r, "correction") for r in table),
        "feature": sum(has(r, "feature") for r in table),
        "not_testable": sum(bool(r["not_testable"]) for r in table),
    }


def planned_in_use(table: list[dict[str, Any]] | None = None) -> dict[str, int]:
    """Planned (not yet registered) claim ids the table cites, each with the number of sentences citing it."""
    table = coverage_table() if table is None else table
    out: dict[str, int] = {}
    for row in table:
        for ref in {a["ref"] for a in row["answers"] if a["kind"] == "claim" and a["status"] == "planned"}:
            out[ref] = out.get(ref, 0) + 1
    return dict(sorted(out.items()))
