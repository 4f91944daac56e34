"""The claims framework: registry, protocol (declared rules -> verdicts, never hand-set), resumable units, the
report files and the CLI. The end-to-end part uses one tiny run of every claim (shared with the browser test)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from _claims_tiny import tiny_report

from normlab.cli import main
from normlab.lab.claims import all_claims, claim_ids, get_claim, run_claim
from normlab.lab.claims.base import Claim, MissingDependency, Outcome, Quote
from normlab.lab.report import verdict_table_markdown, write_report
from normlab.lab.verdict import INCONCLUSIVE, NOT_RUN, SUPPORTED, Rule

# Derived from the registry (the package's claim files), never listed twice: adding a claim is adding its file.
ISSUE_IDS = claim_ids()


# ------------------------------------------------------------------------------------------------ registry


def test_registry_lists_every_claim_file_in_its_declared_order():
    import importlib

    from normlab.lab import claims as registry

    modules = [importlib.import_module(f"normlab.lab.claims.{m}") for m in registry.claim_modules()]
    assert {m.CLAIM.id for m in modules} == set(ISSUE_IDS) and len(ISSUE_IDS) == len(modules) >= 14
    places = sorted(registry._order(m)[0] for m in modules)
    assert len(set(places)) == len(places), f"two claims declare the same place in the report: {places}"
    for c in all_claims():
        assert c.articles and all(q.text and q.source for q in c.articles), c.id
        assert c.papers and c.measures and c.title
        assert set(c.configs) >= {"tiny", "quick", "full"}
        for r in (c.rule, *c.secondary):
            assert r.describe().startswith("Supported if")


def test_unknown_claim_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown claim 'nope'; valid ids: faster-convergence"):
        get_claim("nope")


def test_claim_needs_all_three_levels():
    with pytest.raises(ValueError, match="configs must define"):
        Claim("x", "t", (), "", "", Rule("m", "a", "b", "greater"), {"tiny": {}}, run=lambda ctx: Outcome())


# ------------------------------------------------------------------------------------------------ protocol


def _synthetic(run, secondary=()):
    return Claim(id="synthetic", title="synthetic claim", articles=(Quote("it works", "test"),), papers="p",
                 measures="m", rule=Rule("score", "treated", "control", "greater"),
                 configs={"tiny": {}, "quick": {}, "full": {}}, run=run, secondary=secondary)


def _scores(ctx):
    out = Outcome()
    for s in ctx.seeds:
        out.add("score", "treated", s, 1.0 + 0.1 * s)
        out.add("score", "control", s, 0.5)
    return out


def test_verdict_comes_from_the_declared_rule(tmp_path):
    sec = (Rule("score", "control", "treated", "greater"),)
    # 5 seeds: at 3 the skew-robust critical value (12.4) leaves this interval straddling 0
    r = run_claim(_synthetic(_scores, sec), "quick", [0, 1, 2, 3, 4], tmp_path)
    assert r.verdict.verdict == SUPPORTED and r.verdict.effect == pytest.approx(0.7)
    assert r.secondary[0].verdict == "not supported"
    one = run_claim(_synthetic(_scores), "tiny", [0], tmp_path)
    assert one.verdict.verdict == INCONCLUSIVE


def test_missing_dependency_and_errors_are_reported_not_run(tmp_path):
    def missing(ctx):
        raise MissingDependency("normlab.tools is not available")

    def broken(ctx):
        raise RuntimeError("boom")

    def arm_missing(ctx):
        out = _scores(ctx)
        del out.metrics["score"]["treated"]
        out.not_run["treated"] = "family layer missing"
        return out

    r = run_claim(_synthetic(missing), "tiny", [0], tmp_path)
    assert r.verdict.verdict == NOT_RUN and "normlab.tools is not available" in r.verdict.reason
    r = run_claim(_synthetic(broken), "tiny", [0], tmp_path)
    assert r.verdict.verdict == NOT_RUN and "RuntimeError: boom" in r.error
    r = run_claim(_synthetic(arm_missing), "tiny", [0, 1], tmp_path)
    assert r.verdict.verdict == NOT_RUN and "family layer missing" in r.verdict.reason


def test_context_map_runs_lab_configs_in_order_and_refuses_anything_else(tmp_path):
    from normlab.lab.claims.base import Context
    from normlab.lab.train import TrainConfig

    ctx = Context(_synthetic(_scores), "tiny", [0], tmp_path)
    configs = [TrainConfig(data="gaussian_mixture", data_args={"n": 200}, model="mlp", norm=norm,
                           model_args={"widths": [8]}, steps=3, seed=1) for norm in ("bn", "none")]
    results = ctx.map(configs)
    assert [r.config for r in results] == configs and ctx.computed == 2
    assert all(len(r.step_rows) == 3 and r.model is None for r in results)
    with pytest.raises(TypeError, match=r"Context.map \(synthetic\): unit 0 must be a TrainConfig, got dict"):
        ctx.map([{"arm": "a"}])


# ------------------------------------------------------------------------------------------- end to end (tiny)


def test_every_claim_runs_end_to_end_on_the_tiny_configuration():
    results, paths, out, log = tiny_report()
    assert [r.claim.id for r in results] == ISSUE_IDS
    for r in results:
        assert r.error == "", (r.claim.id, r.error)
        assert r.outcome is not None and r.outcome.figures, r.claim.id
        assert r.outcome.not_run == {}, (r.claim.id, r.outcome.not_run)
        for rule, v in [(r.claim.rule, r.verdict), *zip(r.claim.secondary, r.secondary)]:
            arms = r.outcome.metrics[rule.metric]
            assert set(arms[rule.treatment]) == set(arms[rule.control]) == {0}, (r.claim.id, rule.metric)
            assert v.verdict == INCONCLUSIVE and v.n_seeds == 1  # one seed never decides


def test_rerun_gives_the_same_measurements(tmp_path):
    # The claim is deterministic: computed afresh into another store it measures the same; rerun into its own
    # store it reuses every unit (nothing computed twice) and still measures the same.
    results, paths, out, _ = tiny_report()
    first = next(r for r in results if r.claim.id == "dying-relu")
    fresh = run_claim(first.claim, "tiny", [0], tmp_path / "fresh")
    assert fresh.computed == first.computed > 0
    assert fresh.outcome.metrics == first.outcome.metrics
    again = run_claim(first.claim, "tiny", [0], out)
    assert again.computed == 0 and again.reused == first.computed
    assert again.outcome.metrics == first.outcome.metrics


def _store_like(result):
    """What a run looks like when it comes back from the store: JSON, non-finite numbers as null, no module."""
    import dataclasses

    from normlab.lab.store import _clean

    return dataclasses.replace(result, evals=json.loads(json.dumps(_clean(result.evals))),
                               probes=json.loads(json.dumps(_clean(result.probes))), model=None)


@pytest.mark.parametrize("claim_id", ISSUE_IDS)
def test_every_unit_is_a_lab_run_and_the_claim_reads_stored_results(claim_id, tmp_path, monkeypatch):
    """Each unit is a TrainConfig of a lab model (no placeholder), unique, JSON round-trippable with its key, and
    the claim computes its metrics from results shaped as the store returns them."""
    from normlab.lab.claims import base
    from normlab.lab.models import MODELS, build_model
    from normlab.lab.train import TrainConfig

    seen = []
    original = base.Context.map

    def recording(self, configs, *, alone=False):
        seen.extend(configs)
        return [_store_like(r) for r in original(self, configs, alone=alone)]

    monkeypatch.setattr(base.Context, "map", recording)
    r = run_claim(get_claim(claim_id), "tiny", [0], tmp_path)
    assert r.error == "" and r.outcome.metrics, (claim_id, r.error)
    assert seen and len({c.key() for c in seen}) == len(seen), claim_id
    for c in seen:
        assert isinstance(c, TrainConfig) and c.model in MODELS and c.norm != "custom"
        again = TrainConfig.from_dict(json.loads(json.dumps(c.to_dict())))
        assert again == c and again.key() == c.key()
        build_model(c.model, (1, 28, 28), 10, norm=c.norm, **c.model_args)  # the config names a real model


def test_report_files_are_complete_and_self_contained():
    results, paths, out, _ = tiny_report()
    data = json.loads(paths["json"].read_text())
    assert [c["id"] for c in data["claims"]] == ISSUE_IDS
    for c in data["claims"]:
        assert c["verdict"]["rule"]["description"].startswith("Supported if")
        assert c["rerun"].startswith(f"normlab claims --only {c['id']} --tiny")
    tuned = {c["id"]: c["arms"] for c in data["claims"] if c["arms"]}
    assert "faster-convergence" in tuned  # issue 12: every tuned arm's rate and its search reach results.json
    for arms in tuned.values():
        assert all({"name", "lr", "tuning"} <= set(a) for a in arms), arms
    md = paths["md"].read_text()
    assert len(re.findall(r"^\| \d+ \| \[`", md, flags=re.M)) == len(ISSUE_IDS)
    for c in data["claims"]:
        assert f'<a id="claim-{c["id"]}"></a>' in md
    for png in re.findall(r"\(plots/([^)]+\.png)\)", md):
        assert (out / "plots" / png).stat().st_size > 1000
    html = paths["html"].read_text()
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html), "the page must not load anything from the network"
    assert html.count('class="verdict-row"') == len(ISSUE_IDS)


def test_report_escapes_text(tmp_path):
    def nasty(ctx):
        out = _scores(ctx)
        out.measured = "<script>alert(1)</script>"
        return out

    r = run_claim(_synthetic(nasty), "tiny", [0], tmp_path)
    paths = write_report([r], tmp_path)
    html = paths["html"].read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "synthetic" in verdict_table_markdown([r])


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_list_and_bad_arguments(capsys):
    assert main(["claims", "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == ISSUE_IDS
    assert main(["claims", "--only", "nope", "--tiny", "--out", "/nonexistent-never-created"]) == 2
    assert "unknown claim 'nope'" in capsys.readouterr().err
    assert main(["claims", "--seeds", "0", "--tiny"]) == 2
    assert "--seeds must be a positive integer" in capsys.readouterr().err


def test_cli_runs_one_claim_and_prints_the_table(tmp_path, capsys):
    assert main(["claims", "--tiny", "--only", "dying-relu", "--out", str(tmp_path), "--jobs", "1", "--quiet",
                 "--print-table"]) == 0
    text = capsys.readouterr().out
    assert "| 1 | `dying-relu` |" in text and (tmp_path / "index.html").exists()


# ------------------------------------------------------------------------------------------------ the data


def test_claims_data_split_mixes_classes_and_small_training_sets_are_seeded_subsets():
    # Regression: a split grouped by class made small evaluation batches and the "first 1,000 images" few classes.
    from normlab.lab.data import load_mnist5k

    d = load_mnist5k(split_seed=0)
    assert len(d.y_train) == 4000 and len(d.y_val) == 1000
    assert len(set(d.y_val[:50].tolist())) >= 8 and len(set(d.y_train[:50].tolist())) >= 8
    small = load_mnist5k(split_seed=1, train_size=300)
    assert len(small.y_train) == 300 and len(set(small.y_train.tolist())) == 10
    assert torch.equal(small.x_train, load_mnist5k(split_seed=1).x_train[:300])
    assert torch.equal(small.x_val, load_mnist5k(split_seed=1).x_val)
    with pytest.raises(ValueError, match=r"mnist5k: expected train_size as an int from 2 to 4000"):
        load_mnist5k(train_size=5000)
