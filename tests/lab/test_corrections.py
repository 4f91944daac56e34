"""normlab.lab.corrections: each correction's quotes occur verbatim at their line of the seed article, its sources
name the primary paper, and the numbers its demonstration computes with normlab's layers say what the page says."""

import math

import pytest

from normlab.lab import corrections as K

SEEDS = K.seeds_dir()
needs_seeds = pytest.mark.skipif(not all((SEEDS / f).is_file() for f in K.ARTICLES.values()),
                                 reason=f"the seed articles are not at {SEEDS} (set NORMLAB_SEEDS)")


@needs_seeds
def test_every_quote_is_verbatim_at_its_line():
    for c in K.all_corrections():
        assert c.quotes, c.id
        for q in c.quotes:
            lines = K.article_lines(q.article)
            assert 1 <= q.line <= len(lines), (c.id, q.where())
            assert q.text in lines[q.line - 1], (c.id, q.where(), q.text)


def test_registry_ids_sources_and_lookup():
    ids = K.correction_ids()
    assert len(ids) == len(set(ids)) and len(ids) >= 4
    for required in ("layer-norm-per-example", "batch-renorm-not-over-time", "affine-is-linear",
                     "bias-before-bn-cancelled"):
        assert required in ids
    for c in K.all_corrections():
        assert c.truth and c.reading and c.title
        assert any("arXiv:" in s or "openreview" in s for s in c.sources), c.id
    assert K.get_correction("affine-is-linear").claim == "sigmoid-saturation"
    with pytest.raises(ValueError, match="unknown correction 'nope'"):
        K.get_correction("nope")
    with pytest.raises(ValueError, match="unknown seed article"):
        K.article_lines("999")


def test_layer_norm_output_of_one_example_ignores_the_batch_and_the_dataset():
    n = K.demo_layer_norm_per_example()
    for key in ("ln_alone_vs_in_batch", "ln_other_batch_vs_in_batch", "ln_with_dataset_vs_in_batch"):
        assert n[key] <= 1e-6, (key, n[key])
    assert n["ln_vs_float64_reference"] <= 1e-5
    assert abs(n["ln_example_mean"]) <= 1e-5 and abs(n["ln_example_var"] - 1) <= 1e-4
    assert n["bn_other_batch_vs_in_batch"] > 0.5  # BatchNorm's output for the same example does depend on the batch


def test_batch_renorm_r_d_and_what_they_do():
    n = K.demo_batch_renorm()
    eps = 1e-5
    for c in range(4):
        sigma = n["running_std"][c]
        r = n["batch_std"][c] / sigma
        d = (n["batch_mean"][c] - n["running_mean"][c]) / sigma
        assert n["r"][c] == pytest.approx(r, rel=1e-12) and n["d"][c] == pytest.approx(d, rel=1e-12, abs=1e-12)
        assert n["r_clipped"][c] == pytest.approx(min(max(r, 1 / 1.5), 1.5))
        assert n["d_clipped"][c] == pytest.approx(min(max(d, -0.5), 0.5))
    assert n["running_std"][0] == pytest.approx(math.sqrt(1 + eps))
    assert any(abs(x - 1) > 0.2 for x in n["r"]) and any(abs(x) > 0.5 for x in n["d"])  # the batch is off
    assert n["r_clipped"] != n["r"] and n["d_clipped"] != n["d"]  # clipping acts on this batch
    assert n["brn_r1_d0_vs_bn"] <= 1e-5  # r = 1, d = 0: BatchNorm
    assert n["brn_unclipped_vs_running_normalization"] <= 1e-5  # unclipped: the running-statistics normalization
    assert n["brn_clipped_vs_formula"] <= 1e-5
    assert n["bn_vs_running_normalization"] > 1.0
    # clipped renorm corrects toward the running statistics: strictly between BN and the running normalization
    assert 1e-3 < n["brn_clipped_vs_running_normalization"] < n["bn_vs_running_normalization"]


def test_affine_step_is_linear_and_training_normalization_is_not():
    n = K.demo_affine_is_linear()
    assert n["eval_superposition_error"] <= 1e-5
    assert n["eval_affine_combination_error"] <= 1e-5
    assert n["sigmoid_superposition_error"] > 0.1
    assert n["train_superposition_error"] > 1.0
    assert n["train_scale_invariance_error"] <= 1e-3
    assert n["train_linear_would_give"] > 10


def test_bias_before_bn_is_cancelled_and_after_is_redundant_with_beta():
    n = K.demo_bias_cancelled()
    assert n["bias_max_abs"] > 1  # a bias that would matter if it were not cancelled
    assert n["output_with_vs_without_bias"] <= 1e-12
    assert n["bias_grad_max"] <= 1e-12 and n["weight_grad_max"] > 0.1
    assert n["after_bias_grad_vs_beta_grad"] == 0.0 and n["after_beta_grad_max"] > 0.1
    assert n["after_bias_vs_merged_beta"] <= 1e-12
    assert len(n["tool_found"]) == 1 and n["tool_found"][0].startswith("0.bias is cancelled")


def test_running_average_normalization_lets_the_bias_run_away():
    n = K.demo_running_average_normalization()
    ran = n["ran_bias_drift_at_100_200_300"]
    assert ran[0] > 2 and ran[1] > ran[0] + 2 and ran[2] > ran[1] + 2  # keeps growing, no sign of stopping
    assert max(n["bn_bias_drift_at_100_200_300"]) <= 1e-5  # zero gradient under BatchNorm
    assert n["bn_final_loss"] == pytest.approx(5.0, abs=1e-3)


def test_compute_corrections_is_json_ready_and_shares_demonstrations():
    import json

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the lab's conftest runs with 1: make a change of the thread count visible
    try:
        rng = torch.get_rng_state()
        out = K.compute_corrections()
        assert torch.get_num_threads() == 2 and torch.equal(torch.get_rng_state(), rng)
    finally:
        torch.set_num_threads(before)
    assert [c["id"] for c in out] == K.correction_ids()
    assert all(c["error"] is None and c["numbers"] for c in out)
    json.dumps(out, allow_nan=False)
    by_id = {c["id"]: c for c in out}
    assert by_id["affine-is-linear"]["numbers"] == by_id["normalization-not-linear"]["numbers"]
    assert by_id["layer-norm-per-example"]["quotes"][0] == {
        "article": "000", "file": K.ARTICLES["000"], "line": 58,
        "text": "One approach is to compute the statistics not over the mini-batch, but over the entire training set. "
                "This is known as Layer Normalization."}


def test_a_failing_demonstration_is_recorded_not_raised(monkeypatch):
    def boom():
        raise RuntimeError("broken")

    c = K.get_correction("affine-is-linear")
    monkeypatch.setattr(K, "_CORRECTIONS", (K.Correction(**{**c.__dict__, "demonstrate": boom}),))
    (row,) = K.compute_corrections()
    assert row["numbers"] == {} and row["error"] == "RuntimeError: broken"
