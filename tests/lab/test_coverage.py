"""normlab.lab.coverage: every quoted sentence occurs verbatim at its line of its seed article, and every answer
names something that exists: a registered claim (or one of the issue's planned ids, counted separately), an
importable normlab feature, or a correction."""

import pytest

from normlab.lab import corrections as K
from normlab.lab import coverage as V
from normlab.lab.claims import all_claims

SEEDS = K.seeds_dir()
needs_seeds = pytest.mark.skipif(not all((SEEDS / f).is_file() for f in K.ARTICLES.values()),
                                 reason=f"the seed articles are not at {SEEDS} (set NORMLAB_SEEDS)")


@needs_seeds
def test_every_quoted_text_is_verbatim_in_its_article_line():
    for e in V.ENTRIES:
        s = e.sentence
        lines = K.article_lines(s.article)
        assert 1 <= s.line <= len(lines), s.where()
        assert s.text in lines[s.line - 1], (s.where(), s.text)


def test_every_answer_exists():
    registered = {c.id for c in all_claims()}
    planned_used = set()
    for e in V.ENTRIES:
        assert bool(e.answers) != bool(e.not_testable), e.sentence.where()
        for a in e.answers:
            kind, _, name = a.partition(":")
            assert kind in ("claim", "feature", "correction"), a
            if kind == "claim":
                if name not in registered:
                    where = e.sentence.where()
                    assert name in V.PLANNED_CLAIMS, f"{where}: claim {name} is neither registered nor planned"
                    planned_used.add(name)
            elif kind == "correction":
                K.get_correction(name)
            else:
                assert name.startswith("normlab."), a
                assert V.resolve_feature(name) is not None
    assert V.problems() == []
    # a planned id that has landed in the registry is simply existing; the rest are counted on the page
    table = V.coverage_table()
    planned_rows = [a for r in table for a in r["answers"] if a["status"] == "planned"]
    assert {a["ref"] for a in planned_rows} == planned_used == set(V.planned_in_use(table))
    assert sum(V.planned_in_use(table).values()) == sum(
        any(a["ref"] == p and a["status"] == "planned" for a in r["answers"]) for r in table for p in planned_used)
    assert all(a["status"] == "existing" for r in table for a in r["answers"] if a["kind"] != "claim")


def test_issue_13_claims_are_all_registered_and_none_is_planned():
    registered = {c.id for c in all_claims()}
    assert V.ISSUE_13_CLAIMS == {
        "deep-networks", "sigmoid-saturation", "alternatives-regularize", "replaces-dropout", "alpha-dropout",
        "full-normalization", "sequence-normalization", "running-average-normalization", "activation-placement",
        "lr-sensitivity", "training-overhead"}
    assert V.ISSUE_13_CLAIMS <= registered
    assert V.PLANNED_CLAIMS == frozenset() and V.planned_in_use() == {}
    table = V.coverage_table()
    assert all(a["status"] == "existing" for r in table for a in r["answers"])
    assert V.summary(table)["planned_claim_only"] == 0
    used = {a.partition(":")[2] for e in V.ENTRIES for a in e.answers if a.startswith("claim:")}
    assert registered <= used  # every existing claim answers at least one sentence


def test_a_cited_unregistered_id_is_planned_only_when_announced(monkeypatch):
    extra = V.ENTRIES + (V._e("000", 5, "Batch Normalization", "claim:future-claim"),)
    monkeypatch.setattr(V, "ENTRIES", extra)
    assert any("claim:future-claim does not exist" in p for p in V.problems())
    monkeypatch.setattr(V, "PLANNED_CLAIMS", frozenset({"future-claim"}))
    assert V.problems() == [] and V.planned_in_use() == {"future-claim": 1}
    assert V.summary()["planned_claim_only"] == 1


def test_every_correction_is_referenced_and_covers_its_quotes():
    cited = {a.partition(":")[2] for e in V.ENTRIES for a in e.answers if a.startswith("correction:")}
    assert cited == set(K.correction_ids())
    rows = {(e.sentence.article, e.sentence.line, e.sentence.text): e for e in V.ENTRIES}
    for c in K.all_corrections():
        for q in c.quotes:
            e = rows.get((q.article, q.line, q.text))
            assert e is not None and f"correction:{c.id}" in e.answers, (c.id, q.where())


def test_unknown_answers_are_reported(monkeypatch):
    bad = V.ENTRIES + (V._e("000", 5, "Batch Normalization", "claim:no-such", "feature:normlab.nn.NoSuch",
                                "correction:no-such"),
                       V._e("000", 5, "Batch Normalization"))
    monkeypatch.setattr(V, "ENTRIES", bad)
    probs = V.problems()
    assert any("claim:no-such does not exist" in p for p in probs)
    assert any("feature:normlab.nn.NoSuch does not exist" in p for p in probs)
    assert any("correction:no-such does not exist" in p for p in probs)
    assert any("needs either answers or a not-testable reason" in p for p in probs)


def test_summary_counts_add_up():
    table = V.coverage_table()
    s = V.summary(table)
    assert s["sentences"] == len(V.ENTRIES) >= 60
    assert s["not_testable"] == sum(bool(e.not_testable) for e in V.ENTRIES) >= 1
    assert 0 < s["existing_claim"] < s["sentences"] and s["correction"] >= 6


def test_report_carries_coverage_and_corrections(tmp_path):
    import html
    import json

    from normlab.lab.claims import run_claim
    from normlab.lab.claims.base import Claim, Outcome, Quote
    from normlab.lab.report import write_report
    from normlab.lab.verdict import Rule

    def scores(ctx):
        out = Outcome()
        for s in ctx.seeds:
            out.add("score", "treated", s, 1.0 + 0.1 * s)
            out.add("score", "control", s, 0.5)
        return out

    claim = Claim(id="synthetic", title="synthetic claim", articles=(Quote("it works", "test"),), papers="p",
                  measures="m", rule=Rule("score", "treated", "control", "greater"),
                  configs={"tiny": {}, "quick": {}, "full": {}}, run=scores)
    paths = write_report([run_claim(claim, "quick", [0, 1, 2], tmp_path / "runs")], tmp_path)
    meta = json.loads(paths["json"].read_text())["meta"]
    assert len(meta["coverage"]) == len(V.ENTRIES) and meta["coverage_summary"] == V.summary()
    assert [c["id"] for c in meta["corrections"]] == K.correction_ids()
    brn = {c["id"]: c for c in meta["corrections"]}["batch-renorm-not-over-time"]
    assert brn["numbers"]["brn_r1_d0_vs_bn"] <= 1e-5 and len(brn["numbers"]["r"]) == 4
    page, md = paths["html"].read_text(), paths["md"].read_text()
    assert '<section id="corrections">' in page and '<section id="coverage">' in page
    assert page.count('class="coverage-row"') == len(V.ENTRIES)
    for c in meta["corrections"]:
        assert f'id="correction-{c["id"]}"' in page and f"`{c['id']}`" in md
        for q in c["quotes"]:
            assert html.escape(q["text"]) in page and q["text"] in md
    # the demonstrated numbers are on both pages
    r = K.get_correction("batch-renorm-not-over-time")
    shown = f"{brn['numbers']['r'][0]:.4g}"
    assert shown in page and shown in md and r.sources[0] in md
    assert "(planned)" not in page and "not testable:" in md  # every cited claim is registered
    assert meta["coverage_planned"] == V.planned_in_use()
    assert all(f"{k} ({n})" in md for k, n in meta["coverage_planned"].items())
