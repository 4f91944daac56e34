"""The claims report: ``index.html`` (self-contained: CSS and images inline, no script, no network),
``report.md`` (the same content, images as files under ``plots/``) and ``results.json`` (every number).

Layout: a header (when, where, how to rerun), the verdict table (one row per claim: what the articles say, what
was measured, the verdict, the effect with its 95% interval, confirmatory or exploratory, a link to the claim's
section), how verdicts are decided (every statistic defined), the calibration of that decision method measured at
report time, the seed articles, then one section per claim: the quotes, what the papers report, the rule declared
before running, its preregistration status, the verdict(s) with method, margin, minimum detectable effect and what
would change them, the plots, the per-seed numbers, notes (arms not run and why) and the exact command and
configuration to rerun it.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from .claims.base import ClaimResult, environment
from .protocol import default_seeds, load_registry, seed_reason
from .protocol import status as protocol_status
from .verdict import INCONCLUSIVE, NOT_RUN, NOT_SUPPORTED, STATISTICS, SUPPORTED, Verdict, _fmt, calibrate, holm

__all__ = ["run_claims", "write_report", "verdict_table_markdown", "results_dict", "calibration_for",
           "SEED_ARTICLES"]

_BADGE = {SUPPORTED: "supported", NOT_SUPPORTED: "notsupported", INCONCLUSIVE: "inconclusive", NOT_RUN: "notrun"}

_CSS = """
.censored{color:#a00;font-weight:bold}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;
color:#1b1b1b;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{margin-top:2.2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;width:100%}th,td{border:1px solid #d8d8d8;padding:.35em .5em;
vertical-align:top;text-align:left;font-size:.92em}th{background:#f3f3f3}
.v{font-weight:600;padding:.1em .45em;border-radius:.3em;white-space:nowrap}
.supported{background:#d9f2dc;color:#135d1c}.notsupported{background:#f9d9d6;color:#8a1c12}
.inconclusive{background:#fdf0c9;color:#6b5100}.notrun{background:#e4e4e4;color:#444}
blockquote{margin:.4em 0 .4em 0;padding:.2em .8em;border-left:4px solid #c9d6e8;background:#f7f9fc}
blockquote .src{display:block;font-size:.85em;color:#555;margin-top:.2em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.88em;color:#444}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}.meta{color:#555;font-size:.9em}
.rule{background:#eef4ff;padding:.5em .8em;border-radius:.3em}
.confirmatory{background:#d9ecf9;color:#0b4a75}.exploratory{background:#efe3f7;color:#5b2a7a}
dl.defs dt{font-weight:600;margin-top:.3em}dl.defs dd{margin-left:1.5em}.stats{font-size:.9em;color:#333}
"""

# The five articles the claims are drawn from (/work/shared/seeds/, quoted as "seed article NNN" in the claims).
SEED_ARTICLES = (
    ("000", "Batch Normalization", "Dagshub Glossary"),
    ("001", "Batch Normalization in Neural Networks in Deep Learning", "a personal blog, 24 June 2019"),
    ("002", "How Batch Normalization Can Make Neural Networks Quicker", "a machine-translated rewrite of an English "
            "article"),
    ("003", "Batch Normalization (tips, after the original paper)", "a personal notes page"),
    ("004", "Batch Normalization in Convolutional Neural Network", "Codemia"),
)

_DEFINE = {"effect": "mean paired difference (treatment - control, per seed)",
           "d_z": "d_z (effect / SD of the per-seed differences)"}


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _verdict_cell_html(v: Verdict) -> str:
    return f'<span class="v {_BADGE.get(v.verdict, "notrun")}">{html.escape(v.verdict)}</span>'


def _anchor(claim_id: str) -> str:
    return f"claim-{claim_id}"


def _effect_text(v: Verdict) -> str:
    """Effect [95% CI] with the standardized effect, each defined in the text (no bare symbols)."""
    if v.verdict == NOT_RUN:
        return v.reason
    text = v.summary()
    if v.d_z is not None:
        text += f"; standardized effect {_DEFINE['d_z']} = {v.d_z:.2g}"
    return text


def _stats_text(v: Verdict) -> str:
    """Method, seeds, margin, MDE and p-value of one verdict, in words."""
    if v.rule is None:
        return ""
    unit = v.rule.unit
    parts = [f"{v.method or v.rule.method}, {v.n_seeds} seed(s)"]
    m = v.margin if v.margin is not None else v.rule.margin
    parts.append(f"margin {_num(m)}{unit}" + ("" if m > 0 else " (none declared)"))
    if v.mde is not None:
        parts.append(f"minimum detectable effect (MDE, {v.power or 0.8:.0%} power) {_num(v.mde)}{unit}")
    if v.p_value is not None:
        p = f"one-sided p = {v.p_value:.2g}"
        if v.family_size > 1:
            p += f", Holm-adjusted over {v.family_size} confirmatory rules {v.p_adjusted:.2g}"
        parts.append(p + f" (supported needs < {v.alpha or v.rule.alpha:.3g})")
    return "; ".join(parts)


def _num(x: float | None) -> str:
    return "n/a" if x is None else _fmt(float(x))


def _final(r: ClaimResult) -> ClaimResult:
    """The claim's verdicts with Holm's adjustment over its confirmatory rules (idempotent)."""
    primary, secondary = holm(r.verdict, r.secondary)
    if primary is r.verdict and all(a is b for a, b in zip(secondary, r.secondary)):
        return r
    return dataclasses.replace(r, verdict=primary, secondary=secondary)


def _status(r: ClaimResult, registry: dict) -> dict[str, Any]:
    try:
        return protocol_status(r.claim, r.level, r.seeds, registry)
    except (ValueError, TypeError) as exc:  # a claim whose configuration is not JSON-able: say so, not crash
        return {"protocol_hash": None, "status": "exploratory", "status_reason": f"protocol not hashable: {exc}",
                "protocol": None}


def _family_size(r: ClaimResult) -> int:
    return 1 + sum(1 for x in r.claim.secondary if x.confirmatory)


@lru_cache(maxsize=8)
def _calibration(seed_counts: tuple[int, ...], family_size: int) -> dict[str, Any]:
    return calibrate(seed_counts, n_sim=20_000, seed=0, family_size=family_size)


def calibration_for(results: Sequence[ClaimResult]) -> dict[str, Any]:
    """``meta.calibration``: the decision method simulated at the seed counts this report used (see
    :func:`normlab.lab.verdict.calibrate`)."""
    counts = {len(r.seeds) for r in results} | {v.n_seeds for r in results for v in (r.verdict, *r.secondary)
                                               if v.n_seeds > 0}
    fam = max((_family_size(r) for r in results), default=1)
    return dict(_calibration(tuple(sorted(counts or {1})), fam))


def _zero_margin_rules(results: Sequence[ClaimResult]) -> list[str]:
    return [f"{r.claim.id}: {x.metric} ({x.treatment} - {x.control})"
            for r in results for x in (r.claim.rule, *r.claim.secondary) if not x.margin_declared]


def results_dict(results: Sequence[ClaimResult], meta: dict[str, Any]) -> dict[str, Any]:
    """Everything as plain JSON-able data (the figures excepted)."""
    claims = []
    registry = load_registry()
    for r in results:
        r = _final(r)
        st = _status(r, registry)
        c = r.claim
        o = r.outcome
        claims.append({
            "id": c.id, "title": c.title, "level": r.level, "seeds": r.seeds,
            "articles": [{"text": q.text, "source": q.source} for q in c.articles],
            "papers": c.papers, "measures": c.measures, "interpretation": c.interpretation,
            "verdict": r.verdict.to_dict(), "secondary": [v.to_dict() for v in r.secondary],
            "measured": o.measured if o else "", "metrics": o.metrics if o else {},
            "tables": [{"title": t.title, "header": list(t.header), "rows": [list(x) for x in t.rows]}
                       for t in (o.tables if o else [])],
            "notes": list(o.notes) if o else [], "not_run": dict(o.not_run) if o else {},
            "arms": [{"name": a, **v} for a, v in o.arms.items()] if o else [],
            "error": r.error, "seconds": round(r.seconds, 2), "units_reused": r.reused,
            "units_computed": r.computed, "config": dict(c.configs[r.level]), "rerun": r.rerun_command,
            "protocol_hash": st["protocol_hash"], "status": st["status"], "status_reason": st["status_reason"],
            "protocol": st["protocol"], "seed_reason": seed_reason(c, r.level, r.seeds, registry),
        })
    return {"meta": meta, "claims": claims}


def verdict_table_markdown(results: Sequence[ClaimResult], link: bool = True) -> str:
    """The verdict table in Markdown (what the README embeds)."""
    lines = ["| # | Claim | What the articles say | What was measured | Verdict | "
             f"Effect: {_DEFINE['effect']} [95% paired-t CI] | Protocol |",
             "|---|---|---|---|---|---|---|"]
    registry = load_registry()
    for i, r in enumerate(results, 1):
        r = _final(r)
        name = f"[`{r.claim.id}`](#{_anchor(r.claim.id)})" if link else f"`{r.claim.id}`"
        said = r.claim.title
        measured = (r.outcome.measured if r.outcome else "") or r.claim.rule.metric
        cells = [str(i), name, said, measured, f"**{r.verdict.verdict}**", _effect_text(r.verdict),
                 _status(r, registry)["status"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def write_report(results: Sequence[ClaimResult], out_dir: str | Path, *, command: str = "",
                 total_seconds: float | None = None) -> dict[str, Path]:
    """Write ``index.html``, ``report.md``, ``results.json`` and ``plots/*.png`` into ``out_dir``."""
    results = [_final(r) for r in results]
    out = Path(out_dir)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    meta = {"generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "command": command,
            "environment": environment(),
            "total_seconds": None if total_seconds is None else round(total_seconds, 1),
            "levels": sorted({r.level for r in results}),
            "units_computed": sum(r.computed for r in results), "units_reused": sum(r.reused for r in results),
            "calibration": calibration_for(results), "definitions": dict(STATISTICS),
            "seed_articles": [{"id": i, "title": t, "where": w} for i, t, w in SEED_ARTICLES],
            "rules_without_margin": _zero_margin_rules(results)}
    meta.update(articles_meta())  # meta.corrections, meta.coverage, meta.coverage_summary
    # Render each figure once: PNG file for the Markdown, the same bytes inline for the HTML.
    images: dict[str, list[tuple[str, str, bytes]]] = {}
    for r in results:
        images[r.claim.id] = []
        for f in (r.outcome.figures if r.outcome else []):
            png = _fig_png(f.figure)
            fname = f"{r.claim.id}-{f.name}.png"
            (plots / fname).write_bytes(png)
            images[r.claim.id].append((fname, f.caption, png))
    data = results_dict(results, meta)
    paths = {"json": out / "results.json", "md": out / "report.md", "html": out / "index.html"}
    paths["json"].write_text(json.dumps(data, indent=1, default=str))
    paths["md"].write_text(_markdown(results, meta, images))
    paths["html"].write_text(_html(results, meta, images))
    return paths


def _counts(results: Sequence[ClaimResult]) -> str:
    order = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_RUN)
    n = {k: sum(r.verdict.verdict == k for r in results) for k in order}
    return ", ".join(f"{n[k]} {k}" for k in order if n[k])


def _markdown(results, meta, images) -> str:
    e = meta["environment"]
    md = ["# normlab claims: what Batch Normalization articles say, tested", "",
          f"Generated {meta['generated']} by `{meta['command'] or 'normlab claims'}` with normlab {e['normlab']}, "
          f"torch {e['torch']} on {e['platform']} ({e['cpus']} CPUs)"
          + (f", {meta['total_seconds']} s" if meta["total_seconds"] is not None else "")
          + f" ({meta['units_computed']} runs computed, {meta['units_reused']} reused from earlier invocations).", "",
          f"Verdicts: {_counts(results)}. Every verdict comes from a rule declared before the runs (paired "
          "difference over seeds, paired t-interval, Holm's adjustment over each claim's confirmatory rules); see "
          "*How the verdicts are decided* below and each section.", "",
          verdict_table_markdown(results), ""]
    md += _method_markdown(results, meta)
    registry = load_registry()
    for i, r in enumerate(results, 1):
        c = r.claim
        st = _status(r, registry)
        md += [f'<a id="{_anchor(c.id)}"></a>', "", f"## {i}. `{c.id}`: {c.title}", "", "**What the articles say**", ""]
        md += [f"> {q.text}\n> — {q.source}\n" for q in c.articles]
        md += ["**What the papers report**", "", c.papers, "", "**What this experiment measures**", "", c.measures, "",
               f"**Declared rule** (before running): {c.rule.describe()}", "",
               f"**Protocol: {st['status']}** (hash `{(st['protocol_hash'] or 'none')[:12]}`): {st['status_reason']}.",
               ""]
        if c.interpretation:
            md += [f"*How to read it:* {c.interpretation}", ""]
        md += [f"**Verdict: {r.verdict.verdict}** — {c.rule.metric}, {c.rule.treatment} - {c.rule.control}, "
               f"{r.verdict.n_seeds} seed(s): effect ({_DEFINE['effect']}) [95% paired-t CI] = "
               f"{_effect_text(r.verdict)}. Why: {r.verdict.reason}.", ""]
        if r.verdict.rule is not None and r.verdict.verdict != NOT_RUN:
            md += [f"Test: {_stats_text(r.verdict)}.", "", f"*What would change it:* "
                   f"{r.verdict.what_would_change_it()}", ""]
        md += [f"Warning: {w}." for w in r.verdict.warnings] + ([""] if r.verdict.warnings else [])
        if r.outcome and r.outcome.measured:
            md += [f"Measured: {r.outcome.measured}", ""]
        rates = _arm_rates(r)
        if rates:
            md += ["Chosen learning rate per arm (declared search on the tuning split; see the table below): "
                   + "; ".join(f"`{a}` {'**' + t + '**' if cens else t}" for a, t, cens in rates) + ".", ""]
        if r.secondary:
            md += ["| secondary rule | verdict | effect [95% paired-t CI] | test | what would change it |",
                   "|---|---|---|---|---|"]
            md += [_cells_md([f"{_rule_label(v)}", v.verdict, _effect_text(v), _stats_text(v),
                              v.what_would_change_it()]) for v in r.secondary if v.rule]
            md.append("")
        for fname, caption, _ in images.get(c.id, []):
            md += [f"![{caption}](plots/{fname})", "", f"*{caption}*", ""]
        for t in (r.outcome.tables if r.outcome else []):
            md += [f"*{t.title}*", "", "| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
            md += ["| " + " | ".join(x) + " |" for x in t.rows]
            md.append("")
        notes = _notes(r)
        if notes:
            md += ["**Notes**", ""] + [f"- {n}" for n in notes] + [""]
        md += ["**Rerun**", "", f"```\n{r.rerun_command}\n```", "", "Configuration:", "",
               f"```json\n{json.dumps(dict(c.configs[r.level]), indent=1)}\n```",
               f"Verdict {seed_reason(c, r.level, r.seeds, registry)}; {r.seconds:.1f} s; units computed "
               f"{r.computed}, reused {r.reused}.", ""]
    md += _section(meta, "corrections", _corrections_markdown) + _section(meta, "coverage", _coverage_markdown)
    return "\n".join(md)


def _cells_md(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _rule_label(v: Verdict) -> str:
    x = v.rule
    if x is None:
        return v.reason or "no rule"
    role = "confirmatory" if x.confirmatory else "descriptive"
    pred = {"equivalence": f"equivalent within +-{_num(x.margin)}{x.unit}",
            "noninferiority": f"no worse than {_num(x.margin)}{x.unit} ({x.direction} is better)"}.get(
        x.kind, f"predicted {x.direction}")
    return f"{x.metric}: {x.treatment} - {x.control} ({pred}; {role})"


def _calibration_sentence(cal: dict) -> str:
    cov = "n/a (no interval below 2 seeds)" if cal["coverage"] is None else f"{cal['coverage']:.1%}"
    return (f"Simulating {cal['n_sim']:,} experiments per condition with no effect beyond the margin (the true effect "
            f"exactly on each rule's boundary) at the seed counts used here ({', '.join(map(str, cal['n_seeds']))}), "
            f"through the same decision code, the {cal.get('method_detail') or cal['method']} said \"supported\" in "
            f"at most "
            f"{cal['false_supported_rate']:.2%} of them (nominal {cal['nominal_false_supported_rate']:.1%}; the bar is "
            f"{cal['bar']:.0%}: {'met' if cal['passes'] else 'NOT met'}), and its 95% intervals covered the true "
            "effect "
            f"in at least {cov} (nominal {cal['nominal_coverage']:.0%}).{_calibration_shapes(cal)}")


def _calibration_shapes(cal: dict) -> str:
    """The worst case per shape of the null differences, and the shapes beyond the method's class."""
    text = ""
    by = cal.get("by_null")
    if by:
        w = cal.get("worst") or {}
        text += (" Worst case per shape of the seed-to-seed differences (symmetric, heavy-tailed, and skewed in "
                 "either direction): " + ", ".join(f"{k} {v:.2%}" for k, v in by.items())
                 + (f"; overall worst: {w.get('null')} ({w.get('kind')}, {w.get('n_seeds')} seeds)." if w else "."))
    beyond = cal.get("beyond_class")
    if beyond:
        shapes = ", ".join(sorted({c["null"] for c in beyond["conditions"]}))
        text += (f" Beyond the class the method is built for, {shapes}"
                 f" gives up to {beyond['false_supported_rate']:.2%} ({beyond['note']}).")
    return text


def _calibration_rows(cal: dict) -> list[list[str]]:
    return [[str(c["n_seeds"]), c["kind"], c["null"], f"{c['false_supported_rate']:.2%}",
             "n/a" if c["coverage"] is None else f"{c['coverage']:.1%}"] for c in cal["conditions"]]


_CAL_HEADER = ["seeds", "kind of rule", "null distribution of the differences", "false \"supported\" rate",
               "95% interval coverage"]
_METHOD_TEXT = ("A verdict compares two arms run with the same seeds (same data split, initialization seed and "
                "mini-batch order). For each seed the paired difference d_s = metric(treatment) - metric(control) is "
                "taken; the effect is their mean, and the 95% interval is the paired t-interval with a skew-robust "
                "critical value (the larger of Student's and that of exponential-shaped, skewed differences), whose "
                "coverage holds at small seed counts even when the differences are skewed. Superiority rules are "
                "supported when the interval clears the "
                "declared margin in the predicted direction (one-sided level 2.5%); equivalence rules (TOST) when the "
                "interval lies inside plus/minus the margin; non-inferiority rules when it lies above minus the "
                "margin. A claim's primary rule and the secondary rules declared confirmatory are adjusted together "
                "by Holm's method; the other secondary rules are descriptive. A verdict needs at least 2 seeds whose "
                "differences are not all equal. A protocol is confirmatory when its hash matches the one "
                "preregistered in claims/PROTOCOLS.json before the run, otherwise exploratory.")


def _method_markdown(results, meta) -> list[str]:
    cal = meta["calibration"]
    md = ["## How the verdicts are decided", "", _METHOD_TEXT, ""]
    md += [f"- **{k}**: {v}" for k, v in STATISTICS.items()] + [""]
    zero = meta.get("rules_without_margin") or []
    if zero:
        md += [f"**{len(zero)} rule(s) declare no margin** (margin 0: any non-zero effect counts; each needs the "
               "smallest effect worth reporting): " + "; ".join(zero) + ".", ""]
    md += ["## Calibration of the decision method", "", _calibration_sentence(cal), "", _cells_md(_CAL_HEADER),
           "|" + "---|" * len(_CAL_HEADER)]
    md += [_cells_md(row) for row in _calibration_rows(cal)] + [""]
    fam = cal.get("holm_family")
    if fam:
        md += [f"With Holm's adjustment over {fam['family_size']} independent null confirmatory rules, the chance of "
               "any false \"supported\" among them: " + ", ".join(
                   f"{v:.2%} at {n} seeds" for n, v in fam["familywise_false_supported_rate"].items()) + ".", ""]
    md += ["## The seed articles", "", "The claims quote these five public articles (as \"seed article NNN\"):", ""]
    md += [f"- {a['id']}: *{a['title']}* ({a['where']})" for a in meta["seed_articles"]] + [""]
    return md


def _arm_rates(r: ClaimResult) -> list[tuple[str, str, bool]]:
    """Per tuned arm: (arm, "chosen lr, and how the grid was searched", censored?) for the page."""
    rows = []
    for arm, info in (getattr(r.outcome, "arms", None) or {}).items() if r.outcome else ():
        lr, rec = info.get("lr"), info.get("tuning") or {}
        if lr is None:
            continue
        text = f"{float(lr):.3g}"
        ext = rec.get("extensions") or []
        side = rec.get("censored_side")
        if rec.get("censored"):
            where = {"above": "largest", "below": "smallest"}.get(str(side), "edge")
            text += (f" CENSORED: the {where} rate evaluated scored best"
                     + (f" even after extending the grid to {', '.join(f'{x:.3g}' for x in ext)}" if ext else
                        " and the grid could not be extended (cap or hard bound)")
                     + f"; the arm's best rate may lie {side or 'beyond the grid'}")
        elif ext:
            text += f" (grid extended beyond its edge to {', '.join(f'{x:.3g}' for x in ext)})"
        rows.append((arm, text, bool(rec.get("censored"))))
    return rows


def _notes(r: ClaimResult) -> list[str]:
    notes = []
    if r.error:
        notes.append(f"not run: {r.error}")
    if r.outcome:
        notes += [f"arm `{arm}` not run: {why}" for arm, why in r.outcome.not_run.items()]
        notes += list(r.outcome.notes)
    return notes


def _html(results, meta, images) -> str:
    esc = html.escape
    e = meta["environment"]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>normlab claims report</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>normlab claims: what Batch Normalization articles say, tested</h1>",
             f'<p class="meta">Generated {esc(meta["generated"])} by <code>{esc(meta["command"] or "normlab claims")}'
             f"</code> &middot; normlab {esc(e['normlab'])}, torch {esc(e['torch'])}, {esc(e['platform'])}, "
             f"{esc(e['cpus'])} CPUs"
             + (f" &middot; {meta['total_seconds']} s" if meta["total_seconds"] is not None else "")
             + f" &middot; {meta['units_computed']} runs computed, {meta['units_reused']} reused</p>",
             f"<p>Verdicts: {esc(_counts(results))}. Each verdict follows from a rule declared before the runs: the "
             "paired difference between two arms over seeds, its paired t-interval and Holm's adjustment over the "
             'claim\'s confirmatory rules (<a href="#method">how the verdicts are decided</a>, '
             '<a href="#calibration">calibration</a>).</p>',
             '<table id="verdicts"><thead><tr><th>#</th><th>Claim</th><th>What the articles say</th>'
             f"<th>What was measured</th><th>Verdict</th><th>Effect: {esc(_DEFINE['effect'])} [95% paired-t CI]</th>"
             "<th>Protocol</th></tr></thead><tbody>"]
    registry = load_registry()
    statuses = {r.claim.id: _status(r, registry) for r in results}
    for i, r in enumerate(results, 1):
        c = r.claim
        quote = c.articles[0].text if c.articles else c.title
        measured = (r.outcome.measured if r.outcome else "") or c.rule.metric
        parts.append(
            f'<tr class="verdict-row" data-claim="{esc(c.id)}"><td>{i}</td>'
            f'<td><a href="#{_anchor(c.id)}"><code>{esc(c.id)}</code></a><br>{esc(c.title)}</td>'
            f"<td>&ldquo;{esc(quote)}&rdquo;</td><td>{esc(measured)}</td>"
            f"<td>{_verdict_cell_html(r.verdict)}</td><td>{esc(_effect_text(r.verdict))}</td>"
            f"<td>{_status_html(statuses[c.id]['status'])}</td></tr>")
    parts.append("</tbody></table>")
    parts += _method_html(meta)
    for i, r in enumerate(results, 1):
        c = r.claim
        st = statuses[c.id]
        parts.append(f'<section id="{_anchor(c.id)}"><h2>{i}. <code>{esc(c.id)}</code>: {esc(c.title)}</h2>')
        parts.append("<h3>What the articles say</h3>")
        parts += [f'<blockquote>{esc(q.text)}<span class="src">&mdash; {esc(q.source)}</span></blockquote>'
                  for q in c.articles]
        parts.append(f"<h3>What the papers report</h3><p>{esc(c.papers)}</p>")
        parts.append(f"<h3>What this experiment measures</h3><p>{esc(c.measures)}</p>")
        parts.append(f'<p class="rule"><b>Declared rule</b> (before running): {esc(c.rule.describe())}</p>')
        parts.append(f'<p class="protocol"><b>Protocol:</b> {_status_html(st["status"])} (hash '
                     f'<code>{esc((st["protocol_hash"] or "none")[:12])}</code>): {esc(st["status_reason"])}.</p>')
        if c.interpretation:
            parts.append(f"<p><i>How to read it:</i> {esc(c.interpretation)}</p>")
        parts.append(f"<p><b>Verdict:</b> {_verdict_cell_html(r.verdict)} &mdash; {esc(c.rule.metric)}, "
                     f"{esc(c.rule.treatment)} &minus; {esc(c.rule.control)}, {r.verdict.n_seeds} seed(s): effect "
                     f"({esc(_DEFINE['effect'])}) [95% paired-t CI] = {esc(_effect_text(r.verdict))}. Why: "
                     f"{esc(r.verdict.reason)}.</p>")
        if r.verdict.rule is not None and r.verdict.verdict != NOT_RUN:
            parts.append(f'<p class="stats">Test: {esc(_stats_text(r.verdict))}.<br><i>What would change it:</i> '
                         f"{esc(r.verdict.what_would_change_it())}</p>")
        parts += [f'<p class="stats"><b>Warning:</b> {esc(w)}.</p>' for w in r.verdict.warnings]
        if r.outcome and r.outcome.measured:
            parts.append(f"<p>Measured: {esc(r.outcome.measured)}</p>")
        rates = _arm_rates(r)
        if rates:
            parts.append('<p class="rates"><b>Chosen learning rate per arm</b> (declared search on the tuning split; '
                         "see the table below): " + "; ".join(
                             f"<code>{esc(a)}</code> " + (f'<span class="censored">{esc(t)}</span>' if cens
                                                           else esc(t)) for a, t, cens in rates) + ".</p>")
        if r.secondary:
            parts.append("<table><thead><tr><th>Secondary rule</th><th>Verdict</th><th>Effect [95% paired-t CI]</th>"
                         "<th>Test</th><th>What would change it</th></tr></thead><tbody>")
            for v in r.secondary:
                if v.rule:
                    parts.append(f"<tr><td>{esc(_rule_label(v))}</td><td>{_verdict_cell_html(v)}</td>"
                                 f"<td>{esc(_effect_text(v))}</td><td>{esc(_stats_text(v))}</td>"
                                 f"<td>{esc(v.what_would_change_it())}</td></tr>")
            parts.append("</tbody></table>")
        for _fname, caption, png in images.get(c.id, []):
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{b64}">'
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
        for t in (r.outcome.tables if r.outcome else []):
            parts.append(f"<table><caption>{esc(t.title)}</caption><thead><tr>"
                         + "".join(f"<th>{esc(h)}</th>" for h in t.header) + "</tr></thead><tbody>"
                         + "".join("<tr>" + "".join(f"<td>{esc(x)}</td>" for x in row) + "</tr>" for row in t.rows)
                         + "</tbody></table>")
        notes = _notes(r)
        if notes:
            parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
        parts.append(f"<h3>Rerun</h3><pre>{esc(r.rerun_command)}</pre><p>Configuration:</p>"
                     f"<pre>{esc(json.dumps(dict(c.configs[r.level]), indent=1))}</pre>"
                     f'<p class="meta seeds">Verdict {esc(seed_reason(c, r.level, r.seeds, registry))}; '
                     f"{r.seconds:.1f} s; units computed {r.computed}, reused {r.reused}.</p></section>")
    parts += _section(meta, "corrections", _corrections_html) + _section(meta, "coverage", _coverage_html)
    parts.append("</body></html>")
    return "\n".join(parts)


def _status_html(status: str) -> str:
    return f'<span class="v {html.escape(status)}">{html.escape(status)}</span>'


def _method_html(meta) -> list[str]:
    esc = html.escape
    cal = meta["calibration"]
    parts = ['<section id="method"><h2>How the verdicts are decided</h2>', f"<p>{esc(_METHOD_TEXT)}</p>",
             '<dl class="defs">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in STATISTICS.items())
             + "</dl>"]
    zero = meta.get("rules_without_margin") or []
    if zero:
        parts.append(f"<p><b>{len(zero)} rule(s) declare no margin</b> (margin 0: any non-zero effect counts; each "
                     "needs the smallest effect worth reporting):</p><ul>"
                     + "".join(f"<li>{esc(z)}</li>" for z in zero) + "</ul>")
    parts.append("</section>")
    parts += ['<section id="calibration"><h2>Calibration of the decision method</h2>',
              f"<p>{esc(_calibration_sentence(cal))}</p>",
              '<table class="calibration"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in _CAL_HEADER)
              + "</tr></thead><tbody>"
              + "".join("<tr>" + "".join(f"<td>{esc(x)}</td>" for x in row) + "</tr>" for row in _calibration_rows(cal))
              + "</tbody></table>"]
    fam = cal.get("holm_family")
    if fam:
        parts.append(f"<p>With Holm's adjustment over {fam['family_size']} independent null confirmatory rules, the "
                     "chance of any false &ldquo;supported&rdquo; among them: " + esc(", ".join(
                         f"{v:.2%} at {n} seeds" for n, v in fam["familywise_false_supported_rate"].items())) + ".</p>")
    parts.append("</section>")
    parts += ['<section id="seed-articles"><h2>The seed articles</h2>',
              "<p>The claims quote these five public articles (as &ldquo;seed article NNN&rdquo;):</p><ul>"
              + "".join(f"<li>{esc(a['id'])}: <i>{esc(a['title'])}</i> ({esc(a['where'])})</li>"
                        for a in meta["seed_articles"]) + "</ul></section>"]
    return parts


# -- what the articles get wrong, and what answers each of their sentences (lab/corrections.py, lab/coverage.py) --
def articles_meta() -> dict[str, Any]:
    """``corrections`` (each with the numbers its demonstration computed now), ``coverage`` (one row per testable
    sentence of the seed articles) and ``coverage_summary`` (counts) for ``results.json`` ``meta``."""
    from .corrections import compute_corrections
    from .coverage import coverage_table, planned_in_use, summary

    table = coverage_table()
    return {"corrections": compute_corrections(), "coverage": table, "coverage_summary": summary(table),
            "coverage_planned": planned_in_use(table)}


def _number_text(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return "0" if v == 0 else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_number_text(x) for x in v) + "]"
    return str(v)


def _quote_source(q: dict) -> str:
    return f"seed article {q['article']} ({q['file']}, line {q['line']})"


def _answer_text(a: dict) -> str:
    label = {"claim": "claim", "feature": "feature", "correction": "correction"}.get(a["kind"], a["kind"])
    return f"{label} {a['ref']}" + (" (planned)" if a["status"] == "planned" else "")


_CORRECTIONS_INTRO = ("Statements of the seed articles that are wrong or misleading. Each is quoted with its article "
                      "and line, followed by what the primary sources say and a demonstration computed with "
                      "normlab's layers when this report was written (normlab.lab.corrections; the tests assert "
                      "the same numbers).")
_COVERAGE_INTRO = ("Every testable sentence of the five seed articles and what answers it: a claim of this report "
                   "(planned: announced, not yet run), a normlab feature, a correction above, or why it cannot be "
                   "tested.")


def _coverage_counts(meta) -> str:
    s = meta.get("coverage_summary") or {}
    return (f"{s.get('sentences', 0)} sentences: {s.get('existing_claim', 0)} answered by a registered claim, "
            f"{s.get('planned_claim_only', 0)} only by planned claims, {s.get('correction', 0)} by a correction, "
            f"{s.get('feature', 0)} by a feature, {s.get('not_testable', 0)} not testable."
            + ("" if not meta.get("coverage_planned") else " Planned claims cited (sentences): " + ", ".join(
                f"{k} ({n})" for k, n in meta["coverage_planned"].items()) + "."))


def _section(meta, key: str, render) -> list[str]:
    """``render(rows, meta)`` for the run's ``meta[key]`` rows (corrections, coverage), or nothing when it has none
    (a report of a subset of claims, or an older store): one rule for both sections in both formats."""
    rows = meta.get(key) or []
    return render(rows, meta) if rows else []


def _corrections_markdown(items, meta) -> list[str]:
    md = ['<a id="corrections"></a>', "", "## Corrections: what the articles get wrong", "", _CORRECTIONS_INTRO, ""]
    for i, c in enumerate(items, 1):
        md += [f"### C{i}. `{c['id']}`: {c['title']}", ""]
        md += [f"> {q['text']}\n> — {_quote_source(q)}\n" for q in c["quotes"]]
        md += [f"**What is true.** {c['truth']}", "", "**Sources:** " + "; ".join(c["sources"]) + ".", ""]
        if c.get("claim"):
            md += [f"Measured further by the claim `{c['claim']}`.", ""]
        md += [f"**Demonstration** (`{c['demonstration']}`): {c['reading']}", ""]
        if c.get("error"):
            md += [f"The demonstration failed: {c['error']}.", ""]
        else:
            md += ["| quantity | value |", "|---|---|"]
            md += [_cells_md([f"`{k}`", _number_text(v)]) for k, v in c["numbers"].items()] + [""]
    return md


def _coverage_markdown(rows, meta) -> list[str]:
    md = ['<a id="coverage"></a>', "", "## Coverage: every testable sentence of the articles", "", _COVERAGE_INTRO,
          "", _coverage_counts(meta), "", "| article | line | sentence | answered by |", "|---|---|---|---|"]
    for r in rows:
        answered = "; ".join(_answer_text(a) for a in r["answers"]) or f"not testable: {r['not_testable']}"
        md.append(_cells_md([r["article"], str(r["line"]), r["text"], answered]))
    return md + [""]


def _corrections_html(items, meta) -> list[str]:
    esc = html.escape
    parts = ['<section id="corrections"><h2>Corrections: what the articles get wrong</h2>',
             f"<p>{esc(_CORRECTIONS_INTRO)}</p>"]
    for i, c in enumerate(items, 1):
        parts.append(f'<section class="correction" id="correction-{esc(c["id"])}" data-correction="{esc(c["id"])}">'
                     f"<h3>C{i}. <code>{esc(c['id'])}</code>: {esc(c['title'])}</h3>")
        parts += [f'<blockquote>{esc(q["text"])}<span class="src">&mdash; {esc(_quote_source(q))}</span>'
                  "</blockquote>" for q in c["quotes"]]
        parts.append(f"<p><b>What is true.</b> {esc(c['truth'])}</p>"
                     f"<p><b>Sources:</b> {esc('; '.join(c['sources']))}.</p>")
        if c.get("claim"):
            parts.append(f"<p>Measured further by the claim <code>{esc(c['claim'])}</code>.</p>")
        parts.append(f"<p><b>Demonstration</b> (<code>{esc(c['demonstration'])}</code>): {esc(c['reading'])}</p>")
        if c.get("error"):
            parts.append(f"<p><b>The demonstration failed:</b> {esc(c['error'])}.</p>")
        else:
            parts.append('<table class="numbers"><thead><tr><th>quantity</th><th>value</th></tr></thead><tbody>'
                         + "".join(f"<tr><td><code>{esc(k)}</code></td><td>{esc(_number_text(v))}</td></tr>"
                                   for k, v in c["numbers"].items()) + "</tbody></table>")
        parts.append("</section>")
    parts.append("</section>")
    return parts


def _coverage_html(rows, meta) -> list[str]:
    esc = html.escape
    parts = ['<section id="coverage"><h2>Coverage: every testable sentence of the articles</h2>',
             f"<p>{esc(_COVERAGE_INTRO)}</p><p>{esc(_coverage_counts(meta))}</p>",
             '<table class="coverage"><thead><tr><th>Article</th><th>Line</th><th>Sentence</th><th>Answered by</th>'
             "</tr></thead><tbody>"]
    for r in rows:
        cells = []
        for a in r["answers"]:
            text = esc(_answer_text(a))
            if a["kind"] == "correction":
                text = f'<a href="#correction-{esc(a["ref"])}">{text}</a>'
            elif a["kind"] == "claim" and a["status"] == "existing":
                text = f"<code>{text}</code>"
            cells.append(text)
        answered = "<br>".join(cells) or f"<i>not testable:</i> {esc(r['not_testable'])}"
        parts.append(f'<tr class="coverage-row"><td>{esc(r["article"])}</td><td>{r["line"]}</td>'
                     f"<td>&ldquo;{esc(r['text'])}&rdquo;</td><td>{answered}</td></tr>")
    parts.append("</tbody></table></section>")
    return parts


# -- running the claims and writing their report (above lab.claims: the claims define and register, this runs) --
def run_claims(ids: list[str] | None = None, *, level: str = "quick", seeds: int | None = None,
               first_seed: int | None = None, out_dir: str = "claims-report", jobs: int = 1,
               executor: str = "local", address: str | None = None,
               command: str = "", log=print, progress: str = "auto", tally=None) -> tuple[list[ClaimResult], dict]:
    """Run the selected claims (all by default) and write the report; returns the results and the report paths.

    ``seeds`` defaults to 1 (tiny), 5 (quick) or 10 (full); the verdict seeds are ``first_seed ..
    first_seed + seeds - 1``. Without ``first_seed`` (None), each claim uses the fresh block preregistered for it
    at ``level`` (:func:`normlab.lab.protocol.default_seeds`; with its registered count unless ``seeds`` is
    given), so a run after registration is confirmatory by default; a claim with no registered block uses
    ``0 ..`` (exploratory). An explicit ``first_seed`` applies to every claim. Every unit is a lab run stored in
    ``out_dir/normlab.sqlite`` (with the claim id and level) by this process; units already there are reused.
    ``executor``: "local" (``jobs`` worker processes, one torch thread each; 1 = in this process) or "ray" (one
    task per unit on the cluster at ``address``, or a local Ray instance with ``jobs`` CPUs); one executor serves
    every claim of the call. ``progress``: "auto" | "bar" | "lines" | "none" (per claim, over its units).
    Ctrl-C raises :class:`~normlab.lab.executors.Interrupted` with the counts of ``tally``.
    """
    import time
    from pathlib import Path

    from .claims import all_claims, get_claim
    from .claims.base import DEFAULT_SEEDS, LEVELS, run_claim
    from .executors import Tally, make_executor
    from .store import DB_NAME, Store

    if level not in LEVELS:
        raise ValueError(f"normlab claims: level must be one of {LEVELS}, got {level!r}")
    n_seeds = DEFAULT_SEEDS[level] if seeds is None else seeds
    if not isinstance(n_seeds, int) or isinstance(n_seeds, bool) or n_seeds < 1:
        raise ValueError(f"normlab claims: --seeds must be a positive integer, got {seeds!r}")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"normlab claims: --jobs must be a positive integer, got {jobs!r}")
    from .tuning import TUNING_SEED_BASE

    if first_seed is not None and (not isinstance(first_seed, int) or isinstance(first_seed, bool) or first_seed < 0
                                   or first_seed + n_seeds > TUNING_SEED_BASE):
        raise ValueError(f"normlab claims: --first-seed must be an integer >= 0 with every verdict seed below the "
                         f"tuning seeds ({TUNING_SEED_BASE}), got {first_seed!r} with {n_seeds} seeds")
    selected = [get_claim(i) for i in ids] if ids else all_claims()  # unknown ids fail before anything runs
    registry = load_registry()
    if first_seed is None:
        plan = {c.id: default_seeds(c, level, seeds, DEFAULT_SEEDS[level], registry) for c in selected}
    else:
        plan = {c.id: list(range(first_seed, first_seed + n_seeds)) for c in selected}
    late = {i: s for i, s in plan.items() if s and s[-1] >= TUNING_SEED_BASE}
    if late:
        raise ValueError(f"normlab claims: verdict seeds must stay below the tuning seeds ({TUNING_SEED_BASE}); "
                         f"{sorted(late)} would reach {max(s[-1] for s in late.values())}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tally = tally if tally is not None else Tally()
    start = time.perf_counter()
    ex = make_executor(executor, jobs=jobs, address=address, threads=1)
    results = []
    try:
        with Store(out / DB_NAME) as store:
            for n, claim in enumerate(selected, 1):
                run_seeds = plan[claim.id]
                log(f"[{n}/{len(selected)}] {claim.id} ({level}, {seed_reason(claim, level, run_seeds, registry)})")
                r = run_claim(claim, level, run_seeds, out, executor=ex, store=store, log=log, progress=progress,
                              tally=tally)
                log(f"    -> {r.verdict.verdict}: {r.verdict.summary()} ({r.seconds:.1f} s)")
                results.append(r)
    finally:
        ex.close()
    paths = write_report(results, out, command=command, total_seconds=time.perf_counter() - start)
    return results, paths
