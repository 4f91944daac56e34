"""The claims framework: registry, protocol (declared rules -> verdicts, never hand-set), resumable units, the
report files and the CLI. The end-to-end part uses one tiny run of every claim (shared with the browser test)."""

from __future__ import annotations

import json
import re

import pytest

from _claims_tiny import tiny_report
from normlab.cli import main
from normlab.lab.claims import all_claims, claim_ids, get_claim, run_claim
from normlab.lab.claims.base import Claim, MissingDependency, Outcome, Quote
from normlab.lab.report import verdict_table_markdown, write_report
from normlab.lab.verdict import INCONCLUSIVE, NOT_RUN, SUPPORTED, Rule

ISSUE_IDS = ["faster-convergence", "higher-learning-rates", "careless-init", "regularization", "vanishing-gradients",
             "dying-relu", "covariate-shift", "small-batches", "dropout-order", "train-vs-inference",
             "inference-overhead", "batch-layer-norm", "recurrent", "bn-only-training"]


# ------------------------------------------------------------------------------------------------ registry


def test_registry_lists_every_claim_of_the_issue_in_order():
    assert claim_ids() == ISSUE_IDS
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
    r = run_claim(_synthetic(_scores, sec), "quick", [0, 1, 2], tmp_path)
    assert r.verdict.verdict == SUPPORTED and r.verdict.effect == pytest.approx(0.6)
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


def _square(unit):
    return {"value": unit["x"] ** 2}


def test_units_are_stored_and_reused_and_damaged_files_recomputed(tmp_path):
    from normlab.lab.claims.base import Context

    claim = _synthetic(_scores)
    ctx = Context(claim, "tiny", [0], tmp_path)
    units = [{"arm": "a", "seed": s, "x": s + 1} for s in range(3)]
    assert [r["value"] for r in ctx.map(_square, units)] == [1, 4, 9]
    assert (ctx.computed, ctx.reused) == (3, 0)
    ctx2 = Context(claim, "tiny", [0], tmp_path)
    assert [r["value"] for r in ctx2.map(_square, units)] == [1, 4, 9]
    assert (ctx2.computed, ctx2.reused) == (0, 3)
    files = sorted((tmp_path / "runs" / "synthetic").glob("*.json"))
    assert len(files) == 3
    files[0].write_text("{not json")
    ctx3 = Context(claim, "tiny", [0], tmp_path)
    ctx3.map(_square, units + [{"arm": "a", "seed": 9, "x": 10}])
    assert (ctx3.computed, ctx3.reused) == (2, 2)


def test_units_of_other_code_are_recomputed(tmp_path, monkeypatch):
    """A unit's key holds a digest of normlab's source: results of changed code are not reused."""
    from normlab.lab.claims import base

    claim = _synthetic(_scores)
    units = [{"arm": "a", "seed": 0, "x": 2}]
    base.Context(claim, "tiny", [0], tmp_path).map(_square, units)
    assert len(base.code_version()) == 16
    monkeypatch.setattr(base, "code_version", lambda: "another-version")
    ctx = base.Context(claim, "tiny", [0], tmp_path)
    assert [r["value"] for r in ctx.map(_square, units)] == [4]
    assert (ctx.computed, ctx.reused) == (1, 0)


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


def test_rerun_reuses_every_finished_unit():
    results, paths, out, _ = tiny_report()
    first = next(r for r in results if r.claim.id == "dying-relu")
    again = run_claim(first.claim, "tiny", [0], out)
    assert again.computed == 0 and again.reused == first.computed > 0
    assert again.outcome.metrics == first.outcome.metrics


def test_report_files_are_complete_and_self_contained():
    results, paths, out, _ = tiny_report()
    data = json.loads(paths["json"].read_text())
    assert [c["id"] for c in data["claims"]] == ISSUE_IDS
    for c in data["claims"]:
        assert c["verdict"]["rule"]["description"].startswith("Supported if")
        assert c["rerun"].startswith(f"normlab claims --only {c['id']} --tiny")
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


# ---------------------------------------------------------------------------------------------- the models


def test_mlp_dropout_positions_and_kept_preactivations():
    import torch
    from torch import nn

    from normlab.lab.claims._common import MLP

    last = MLP(784, [8, 8, 8], norm_spec="bn", dropout=0.5, dropout_pos="last")
    assert [type(d) for d in last.drops] == [nn.Identity, nn.Identity, nn.Dropout]
    every = MLP(784, [8, 8], norm_spec="bn", dropout=0.5, dropout_pos="before")
    assert all(isinstance(d, nn.Dropout) for d in every.drops)
    m = MLP(784, [8, 8], norm_spec="bn", activation="sigmoid").eval()
    m.keep = True
    x = torch.randn(5, 1, 28, 28)
    y = m(x)
    assert y.shape == (5, 10) and len(m.pre) == 2
    assert torch.allclose(m.post[0], torch.sigmoid(m.pre[0]))
    with pytest.raises(ValueError, match="dropout_pos must be"):
        MLP(784, [8], dropout_pos="middle")


def test_digits_split_is_shuffled_so_slices_mix_classes():
    # Regression: the lab's split is grouped by class; the first examples were all zeros, which made small
    # evaluation batches non-i.i.d. and the eval-mode training subset three classes only.
    from normlab.lab.claims._common import digits

    d = digits(0)
    assert len(d.y_train) == 4000 and len(d.y_val) == 1000
    assert len(set(d.y_val[:50].tolist())) >= 8 and len(set(d.y_train[:50].tolist())) >= 8
    assert sorted(d.y_val.tolist()) == sorted(digits(0).y_val.tolist())
    small = digits(1, n_train=300)
    assert len(small.y_train) == 300 and len(set(small.y_train.tolist())) == 10
