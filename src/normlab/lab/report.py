"""The claims report: ``index.html`` (self-contained: CSS and images inline, no script, no network),
``report.md`` (the same content, images as files under ``plots/``) and ``results.json`` (every number).

Layout: a header (when, where, how to rerun), the verdict table (one row per claim: what the articles say, what
was measured, the verdict, the effect with its 95% interval, a link to the claim's section), then one section per
claim: the quotes, what the papers report, the rule declared before running, the verdict(s), the plots, the
per-seed numbers, notes (arms not run and why) and the exact command and configuration to rerun it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Any, Sequence

from .claims.base import ClaimResult, environment
from .verdict import INCONCLUSIVE, NOT_RUN, NOT_SUPPORTED, SUPPORTED, Verdict

__all__ = ["write_report", "verdict_table_markdown", "results_dict"]

_BADGE = {SUPPORTED: "supported", NOT_SUPPORTED: "notsupported", INCONCLUSIVE: "inconclusive", NOT_RUN: "notrun"}

_CSS = """
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
"""


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _verdict_cell_html(v: Verdict) -> str:
    return f'<span class="v {_BADGE.get(v.verdict, "notrun")}">{html.escape(v.verdict)}</span>'


def _anchor(claim_id: str) -> str:
    return f"claim-{claim_id}"


def _effect_text(v: Verdict) -> str:
    if v.verdict == NOT_RUN:
        return v.reason
    text = v.summary()
    if v.d_z is not None:
        text += f"; d_z = {v.d_z:.2g}"
    return text


def results_dict(results: Sequence[ClaimResult], meta: dict[str, Any]) -> dict[str, Any]:
    """Everything as plain JSON-able data (the figures excepted)."""
    claims = []
    for r in results:
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
            "error": r.error, "seconds": round(r.seconds, 2), "units_reused": r.reused,
            "units_computed": r.computed, "config": dict(c.configs[r.level]), "rerun": r.rerun_command,
        })
    return {"meta": meta, "claims": claims}


def verdict_table_markdown(results: Sequence[ClaimResult], link: bool = True) -> str:
    """The verdict table in Markdown (what the README embeds)."""
    lines = ["| # | Claim | What the articles say | What was measured | Verdict | Effect [95% CI] |",
             "|---|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        name = f"[`{r.claim.id}`](#{_anchor(r.claim.id)})" if link else f"`{r.claim.id}`"
        said = r.claim.title
        measured = (r.outcome.measured if r.outcome else "") or r.claim.rule.metric
        cells = [str(i), name, said, measured, f"**{r.verdict.verdict}**", _effect_text(r.verdict)]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def write_report(results: Sequence[ClaimResult], out_dir: str | Path, *, command: str = "",
                 total_seconds: float | None = None) -> dict[str, Path]:
    """Write ``index.html``, ``report.md``, ``results.json`` and ``plots/*.png`` into ``out_dir``."""
    out = Path(out_dir)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    meta = {"generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "command": command,
            "environment": environment(),
            "total_seconds": None if total_seconds is None else round(total_seconds, 1),
            "levels": sorted({r.level for r in results}),
            "units_computed": sum(r.computed for r in results), "units_reused": sum(r.reused for r in results)}
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
          "difference over seeds, percentile-bootstrap 95% interval); see each section.", "",
          verdict_table_markdown(results), ""]
    for i, r in enumerate(results, 1):
        c = r.claim
        md += [f'<a id="{_anchor(c.id)}"></a>', "", f"## {i}. `{c.id}`: {c.title}", "", "**What the articles say**", ""]
        md += [f"> {q.text}\n> — {q.source}\n" for q in c.articles]
        md += ["**What the papers report**", "", c.papers, "", "**What this experiment measures**", "", c.measures, "",
               f"**Declared rule** (before running): {c.rule.describe()}", ""]
        if c.interpretation:
            md += [f"*How to read it:* {c.interpretation}", ""]
        md += [f"**Verdict: {r.verdict.verdict}** — {c.rule.metric}, {c.rule.treatment} - {c.rule.control}: "
               f"{_effect_text(r.verdict)} over {r.verdict.n_seeds} seed(s).", ""]
        if r.outcome and r.outcome.measured:
            md += [f"Measured: {r.outcome.measured}", ""]
        if r.secondary:
            md += ["| secondary rule | verdict | effect [95% CI] |", "|---|---|---|"]
            md += [f"| {v.rule.metric}: {v.rule.treatment} - {v.rule.control} ({v.rule.direction}) | {v.verdict} | "
                   f"{_effect_text(v)} |" for v in r.secondary if v.rule]
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
               f"seeds: {r.seeds}; {r.seconds:.1f} s; units computed {r.computed}, reused {r.reused}.", ""]
    return "\n".join(md)


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
             "paired difference between two arms over seeds and its percentile-bootstrap 95% interval.</p>",
             '<table id="verdicts"><thead><tr><th>#</th><th>Claim</th><th>What the articles say</th>'
             "<th>What was measured</th><th>Verdict</th><th>Effect [95% CI]</th></tr></thead><tbody>"]
    for i, r in enumerate(results, 1):
        c = r.claim
        quote = c.articles[0].text if c.articles else c.title
        measured = (r.outcome.measured if r.outcome else "") or c.rule.metric
        parts.append(
            f'<tr class="verdict-row" data-claim="{esc(c.id)}"><td>{i}</td>'
            f'<td><a href="#{_anchor(c.id)}"><code>{esc(c.id)}</code></a><br>{esc(c.title)}</td>'
            f"<td>&ldquo;{esc(quote)}&rdquo;</td><td>{esc(measured)}</td>"
            f"<td>{_verdict_cell_html(r.verdict)}</td><td>{esc(_effect_text(r.verdict))}</td></tr>")
    parts.append("</tbody></table>")
    for i, r in enumerate(results, 1):
        c = r.claim
        parts.append(f'<section id="{_anchor(c.id)}"><h2>{i}. <code>{esc(c.id)}</code>: {esc(c.title)}</h2>')
        parts.append("<h3>What the articles say</h3>")
        parts += [f'<blockquote>{esc(q.text)}<span class="src">&mdash; {esc(q.source)}</span></blockquote>'
                  for q in c.articles]
        parts.append(f"<h3>What the papers report</h3><p>{esc(c.papers)}</p>")
        parts.append(f"<h3>What this experiment measures</h3><p>{esc(c.measures)}</p>")
        parts.append(f'<p class="rule"><b>Declared rule</b> (before running): {esc(c.rule.describe())}</p>')
        if c.interpretation:
            parts.append(f"<p><i>How to read it:</i> {esc(c.interpretation)}</p>")
        parts.append(f"<p><b>Verdict:</b> {_verdict_cell_html(r.verdict)} &mdash; {esc(c.rule.metric)}, "
                     f"{esc(c.rule.treatment)} &minus; {esc(c.rule.control)}: {esc(_effect_text(r.verdict))} over "
                     f"{r.verdict.n_seeds} seed(s).</p>")
        if r.outcome and r.outcome.measured:
            parts.append(f"<p>Measured: {esc(r.outcome.measured)}</p>")
        if r.secondary:
            parts.append("<table><thead><tr><th>Secondary rule</th><th>Verdict</th><th>Effect [95% CI]</th></tr>"
                         "</thead><tbody>")
            for v in r.secondary:
                if v.rule:
                    parts.append(f"<tr><td>{esc(v.rule.metric)}: {esc(v.rule.treatment)} &minus; "
                                 f"{esc(v.rule.control)} (predicted {esc(v.rule.direction)})</td>"
                                 f"<td>{_verdict_cell_html(v)}</td><td>{esc(_effect_text(v))}</td></tr>")
            parts.append("</tbody></table>")
        for fname, caption, png in images.get(c.id, []):
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
                     f'<p class="meta">seeds: {esc(str(r.seeds))}; {r.seconds:.1f} s; units computed {r.computed}, '
                     f"reused {r.reused}.</p></section>")
    parts.append("</body></html>")
    return "\n".join(parts)
