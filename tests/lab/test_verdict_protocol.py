"""Preregistration (protocol hashes, the registry, confirmatory vs exploratory) and how the report carries the
statistics: results.json's per-rule method/margin/mde/n_seeds, meta.calibration, per-claim protocol_hash and
status; the page defines every statistic and lists the seed articles."""

import dataclasses
import json
import re

import pytest

from normlab.lab import protocol as P
from normlab.lab.claims import all_claims, run_claim
from normlab.lab.claims.base import Claim, Outcome, Quote
from normlab.lab.report import write_report
from normlab.lab.verdict import INCONCLUSIVE, SUPPORTED, Rule


def _scores(ctx):
    out = Outcome()
    for s in ctx.seeds:
        out.add("score", "treated", s, 1.0 + 0.1 * s)
        out.add("score", "control", s, 0.5 + 0.01 * s * s)
    return out


def _claim(**kw):
    base = dict(id="synthetic", title="synthetic claim", articles=(Quote("it works", "test"),), papers="p",
                measures="m", rule=Rule("score", "treated", "control", "greater", margin=0.1),
                configs={"tiny": {}, "quick": {"steps": 3}, "full": {"steps": 9}}, run=_scores)
    base.update(kw)
    return Claim(**base)


def test_protocol_hash_changes_with_rules_config_and_seeds_only():
    c = _claim()
    h = P.protocol_hash(P.protocol(c, "quick", 5))
    assert h == P.protocol_hash(P.protocol(_claim(), "quick", 5)) and len(h) == 64
    assert h != P.protocol_hash(P.protocol(_claim(rule=Rule("score", "treated", "control", "greater", margin=0.2)),
                                           "quick", 5))
    assert h != P.protocol_hash(P.protocol(_claim(configs={**c.configs, "quick": {"steps": 4}}), "quick", 5))
    assert h != P.protocol_hash(P.protocol(c, "quick", 6))
    assert h != P.protocol_hash(P.protocol(c, "full", 5))
    assert h == P.protocol_hash(P.protocol(_claim(title="another title"), "quick", 5))  # wording is not protocol
    proto = P.protocol(c, "quick", 5)
    assert proto["rules"][0]["role"] == "primary" and proto["rules"][0]["margin"] == 0.1
    assert len(proto["code"]) == 64  # this test module's source: the claim's run function lives here


def test_status_is_confirmatory_only_for_the_registered_protocol(tmp_path):
    reg_path = tmp_path / "PROTOCOLS.json"
    c = _claim(secondary=(Rule("score", "treated", "control", "within", margin=1.0, kind="equivalence",
                               confirmatory=True),))
    fresh = list(range(100, 105))  # the block a first registration declares (fresh-seed rule below)
    st = P.status(c, "quick", fresh, P.load_registry(reg_path))
    assert st["status"] == P.EXPLORATORY and "no protocol" in st["status_reason"]
    P.register([c], "quick", 5, reg_path)
    reg = P.load_registry(reg_path)
    assert reg["protocols"]["synthetic"]["quick"]["hash"] == st["protocol_hash"]
    assert P.status(c, "quick", fresh, reg)["status"] == P.CONFIRMATORY
    changed = dataclasses.replace(c, rule=Rule("score", "treated", "control", "greater", margin=0.05))
    st2 = P.status(changed, "quick", fresh, reg)
    assert st2["status"] == P.EXPLORATORY and "the rules or margins changed" in st2["status_reason"]
    st3 = P.status(c, "quick", fresh[:3], reg)
    assert "seed count (registered 5, run 3;" in st3["status_reason"] and "rules" not in st3["status_reason"]
    assert P.status(c, "tiny", fresh, reg)["status"] == P.EXPLORATORY  # registered per level
    # Registering another level keeps the first.
    P.register([c], "full", 10, reg_path)
    assert set(P.load_registry(reg_path)["protocols"]["synthetic"]) == {"quick", "full"}


def test_kind_preregistration_needs_fresh_seeds(tmp_path):
    # Registering after results exist must not relabel those results confirmatory: the registration declares a
    # fresh seed block, and only a run on exactly those seeds is confirmatory.
    reg_path = tmp_path / "PROTOCOLS.json"
    c = _claim()
    reg = P.register([c], "quick", 5, reg_path)
    entry = reg["protocols"]["synthetic"]["quick"]
    assert entry["seeds"] == [100, 101, 102, 103, 104]
    assert P.status(c, "quick", 5, reg)["status"] == P.EXPLORATORY  # seeds 0..4: the exploratory ones
    st = P.status(c, "quick", list(range(100, 105)), reg)
    assert st["status"] == P.CONFIRMATORY and "100..104" in st["status_reason"]
    again = P.status(c, "quick", 5, reg)["status_reason"]
    assert "the seeds (registered 100..104, run 0..4" in again and "--first-seed 100 --seeds 5" in again
    # A second registration gets the next hundred, never seeds registered (or run from the block's start) before.
    reg = P.register([c], "quick", 5, reg_path)
    assert reg["protocols"]["synthetic"]["quick"]["seeds"] == [200, 201, 202, 203, 204]
    with pytest.raises(ValueError, match="registered before"):
        P.register([c], "quick", 5, reg_path, first_seed=202)
    with pytest.raises(ValueError, match="registered before"):  # every earlier block, not only the last one
        P.register([c], "quick", 5, reg_path, first_seed=103)
    with pytest.raises(ValueError, match=r"must lie in \[100, 1000\)"):
        P.register([c], "quick", 5, reg_path, first_seed=3)
    with pytest.raises(ValueError, match=r"must lie in \[100, 1000\)"):
        P.register([c], "quick", 5, reg_path, first_seed=998)


def test_kind_preregistration_covers_the_verdict_machinery(monkeypatch):
    # The protocol's code digest covers the shared code that turns runs into verdicts, not only the claim's file.
    c = _claim()
    before = P.protocol(c, "quick", 5)["code"]
    monkeypatch.setattr(P, "_MACHINERY", P._MACHINERY[:-1])
    assert P.protocol(c, "quick", 5)["code"] != before


def test_claims_run_on_the_declared_seed_block(tmp_path):
    from normlab.lab.report import run_claims

    results, _ = run_claims(["careless-init"], level="tiny", seeds=1, first_seed=100, out_dir=str(tmp_path),
                            log=lambda s: None, progress="none")
    assert results[0].seeds == [100] and "--first-seed 100" in results[0].rerun_command
    with pytest.raises(ValueError, match="first-seed"):
        run_claims(["careless-init"], level="tiny", seeds=2, first_seed=999, out_dir=str(tmp_path))


def test_registry_in_the_repository_is_valid_and_written_only_on_request(tmp_path, capsys):
    committed = P.load_registry()
    assert committed["format"] == 1 and isinstance(committed["protocols"], dict)
    before = P.REGISTRY.read_text()
    reg_path = tmp_path / "r.json"
    assert P.main(["--only", "dying-relu", "--registry", str(reg_path)]) == 0  # status only: writes nothing
    assert not reg_path.exists() and "dying-relu" in capsys.readouterr().out
    assert P.main(["--register", "--only", "dying-relu", "--level", "full", "--registry", str(reg_path)]) == 0
    assert set(json.loads(reg_path.read_text())["protocols"]) == {"dying-relu"}
    assert P.main(["--register", "--only", "nope", "--registry", str(reg_path)]) == 2
    assert "unknown claim 'nope'" in capsys.readouterr().err
    assert P.main(["--register", "--seeds", "0", "--registry", str(reg_path)]) == 2
    assert P.REGISTRY.read_text() == before
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        P.load_registry(bad)


def test_every_current_claim_has_a_hashable_protocol():
    for c in all_claims():
        for level in ("quick", "full"):
            st = P.status(c, level, 5, {"protocols": {}})
            assert st["status"] == P.EXPLORATORY and len(st["protocol_hash"]) == 64, c.id


def test_report_carries_method_margin_mde_calibration_and_status(tmp_path):
    c = _claim(secondary=(Rule("score", "treated", "control", "within", margin=0.2, kind="equivalence",
                               confirmatory=True),
                          Rule("score", "treated", "control", "greater")))
    r = run_claim(c, "quick", [0, 1, 2, 3, 4], tmp_path)
    paths = write_report([r], tmp_path)
    data = json.loads(paths["json"].read_text())
    claim = data["claims"][0]
    assert claim["status"] == "exploratory" and len(claim["protocol_hash"]) == 64 and claim["status_reason"]
    v = claim["verdict"]
    assert v["verdict"] == SUPPORTED and v["method"].startswith("paired t, skew-robust") and v["margin"] == 0.1
    assert v["n_seeds"] == 5
    assert v["mde"] > 0 and v["family_size"] == 2  # Holm over the primary and the confirmatory equivalence rule
    eq, desc = claim["secondary"]
    assert eq["method"].startswith("paired t TOST") and eq["family_size"] == 2 and desc["family_size"] == 1
    assert desc["warnings"] and data["meta"]["rules_without_margin"] == ["synthetic: score (treated - control)"]
    cal = data["meta"]["calibration"]
    assert cal["false_supported_rate"] <= 0.05 and cal["n_seeds"] == [5] and cal["n_sim"] >= 10_000
    assert 0.94 < cal["coverage"] <= 1.0 and cal["method"] == "paired t" and cal["robust_to"] == "exponential"
    assert set(cal["by_null"]) >= {"exponential-", "lognormal+"} and cal["beyond_class"]["false_supported_rate"] > 0
    assert [a["id"] for a in data["meta"]["seed_articles"]] == ["000", "001", "002", "003", "004"]
    for text in (paths["html"].read_text(), paths["md"].read_text()):
        assert "Calibration of the decision method" in text and "How Batch Normalization Can Make" in text
        assert "minimum detectable effect" in text and "What would change it" in text
        assert "exploratory" in text and "Holm" in text
        # No bare d_z: every "d_z" that shows a number is introduced by its definition.
        for m in re.finditer(r"d_z", text):
            window = text[m.start(): m.start() + 60]
            if re.match(r"d_z = [-+0-9]", window):
                pytest.fail(f"bare d_z in the report: {window!r}")
    assert "d_z (effect / SD of the per-seed differences) =" in paths["md"].read_text()


def test_one_seed_report_still_has_a_calibration(tmp_path):
    r = run_claim(_claim(), "tiny", [0], tmp_path)
    assert r.verdict.verdict == INCONCLUSIVE
    data = json.loads(write_report([r], tmp_path)["json"].read_text())
    cal = data["meta"]["calibration"]
    assert cal["n_seeds"] == [1] and cal["false_supported_rate"] == 0.0 and cal["coverage"] is None
