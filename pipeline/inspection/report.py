"""``distill inspect --html FILE``: one self-contained page for debugging a teacher cache.

From top to bottom: the summary numbers (of each cache with ``--compare``), the histograms (PNG
embedded), an index of rows worst first with links, then one section per chosen row: its images
(embedded thumbnails), visual-token count and grid, the encoded context greyed, and the supervised
tokens coloured from red (teacher gives the target probability 0) to green (1); hovering a token shows
its position, p(target), rank, tail and the teacher's top-5. A teacher-written row shows what the
teacher wrote, and is flagged when it hit max_new_tokens or when decode-then-encode changed its ids. Inline CSS and data URIs only, no scripts
and no external assets: the file can be attached to an issue or opened offline.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache.cachedir import Manifest
from pipeline.files import atomic_write
from pipeline.inspection.figures import figure_bytes, histograms
from pipeline.inspection.rows import RowView, row_view
from pipeline.inspection.sources import RowSource
from pipeline.inspection.summary import RANKING_ROWS, RANKINGS, Profile, format_summary, rank_rows
from pipeline.inspection.tokens import TOP_SHOWN, RowStats, TokenText, token_stats, top_entries

DEFAULT_LIMIT = 50  # rows given a full section; the index lists every row
INDEX_ROWS = 200  # rows listed in the index table
QUICK_ROWS = 8  # links per "worst by ..." line

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.3em; } h2 { font-size: 1em; margin: 1.6em 0 0.3em; font-family: monospace; }
.meta, .note { color: #666; font-size: 0.85em; } .warn { color: #a40; font-size: 0.85em; }
.written { color: #245; font-size: 0.85em; }
.summaries { display: flex; gap: 2em; flex-wrap: wrap; } pre { font-size: 0.8em; background: #f6f6f6; padding: 0.6em; }
.toks { font-family: monospace; line-height: 1.9; white-space: pre-wrap; word-break: break-all; }
.t { padding: 1px 0; border-radius: 2px; cursor: default; } .t:hover { outline: 1px solid #000; }
.ctx { color: #aaa; } .img-tok { color: #fff; background: #9ab; border-radius: 3px; padding: 0 3px; }
.legend span { display: inline-block; width: 3em; text-align: center; font-size: 0.8em; }
.thumbs img { image-rendering: pixelated; border: 1px solid #ccc; margin-right: 0.5em; }
table.index { border-collapse: collapse; font-size: 0.85em; } .index td, .index th { padding: 2px 8px; text-align: right; }
.index td:nth-child(2) { text-align: left; font-family: monospace; } .index tr:nth-child(even) { background: #f4f4f4; }
img.hist { max-width: 100%; }
.index-box { max-height: 22em; overflow-y: auto; border: 1px solid #ddd; display: inline-block; }
"""


def _colour(p: float) -> str:
    """Background for a target probability: hue 0 (red) at p = 0 to 120 (green) at p = 1."""
    p = min(max(p, 0.0), 1.0) if np.isfinite(p) else 0.0
    return f"hsl({120.0 * p:.0f}, 70%, 82%)"


def _display(text: str) -> str:
    """Token text as shown inline: escaped newlines become a visible marker plus a real line break."""
    return html.escape(text.replace("\\n", "\u21b5\n"))


def _attr(value: object) -> str:
    """``value`` escaped for an attribute in double quotes (quotes, ``<``, ``>``, ``&``)."""
    return html.escape(str(value), quote=True)


def _anchor(sample_id: str) -> str:
    return _attr(sample_id)


def _target_spans(sample: Any, text: TokenText, top_k: int) -> list[str]:
    st = token_stats(sample)
    spans = []
    for i in range(sample.num_targets):
        rank = f"{int(st.target_rank[i]) + 1}" if st.target_rank[i] >= 0 else f">{top_k}"
        top = "\n".join(f"  {t}  {p:.3f}" for t, p in top_entries(sample, i, text, TOP_SHOWN))
        tip = (
            f"position {int(sample.positions[i])}: target {text(sample.target_ids[i])}\n"
            f"p(target) {st.target_prob[i]:.4f}, rank {rank}, tail {st.tail_mass[i]:.2e}\n"
            f"teacher top-{TOP_SHOWN}:\n{top}"
        )
        spans.append(
            f'<span class="t" style="background:{_colour(float(st.target_prob[i]))}" '
            f'title="{html.escape(tip, quote=True)}">{_display(text(sample.target_ids[i]))}</span>'
        )
    return spans


def _context_spans(ids: list[int], text: TokenText, placeholders: set[int]) -> list[str]:
    """Grey spans of context ids; a run of image placeholders becomes one ``[image x N]`` marker."""
    out, i = [], 0
    while i < len(ids):
        if ids[i] in placeholders:
            j = i
            while j < len(ids) and ids[j] == ids[i]:
                j += 1
            out.append(f'<span class="img-tok">{_display(text(ids[i]))} \u00d7{j - i}</span>')
            i = j
            continue
        out.append(f'<span class="ctx">{_display(text(ids[i]))}</span>')
        i += 1
    return out


def _tokens_html(sample: Any, view: RowView, text: TokenText, top_k: int, placeholders: set[int]) -> str:
    """The encoded sequence: context greyed, supervised targets coloured (targets only without ids)."""
    targets = _target_spans(sample, text, top_k)
    if view.input_ids is None:
        prompt = f'<span class="ctx">{html.escape(view.prompt_text)}\n</span>' if view.prompt_text else ""
        return prompt + "".join(targets)
    where = {int(p): i for i, p in enumerate(sample.positions)}
    parts: list[str] = []
    context: list[int] = []
    for j, tid in enumerate(view.input_ids):
        if j in where:
            parts += _context_spans(context, text, placeholders)
            context = []
            parts.append(targets[where[j]])
        else:
            context.append(tid)
    return "".join(parts + _context_spans(context, text, placeholders))


def _section(
    sample: Any, stats: RowStats, view: RowView, text: TokenText, top_k: int, placeholders: set[int]
) -> str:
    thumbs = "".join(
        f'<img src="{_attr(uri)}" alt="{_attr(f"image {i + 1} of {sample.sample_id}")}" '
        f'title="{_attr(f"{w}x{h} px on disk")}">'
        for i, (uri, (w, h)) in enumerate(zip(view.thumbs, view.image_sizes, strict=True))
    )
    grid = "; ".join("x".join(str(v) for v in g) for g in view.grids) or "-"
    visual = "-" if view.visual_tokens is None else str(view.visual_tokens)
    sizes = ", ".join(f"{w}x{h}" for w, h in view.image_sizes) or "none"
    flags = "".join(f'<div class="warn">{html.escape(p)}</div>' for p in view.problems)
    if sample.teacher_written:
        flags += (
            f'<div class="written">teacher-written response ({len(sample.written_ids)} generated tokens): '
            f"<q>{html.escape(sample.written_text)}</q></div>\n"
        )
    if stats.hit_limit:
        flags += '<div class="warn">teacher-written response hit max_new_tokens without stopping</div>'
    if stats.ids_changed:
        flags += (
            '<div class="warn">decode-then-encode changed the ids: the written ids are not the leading '
            "cached targets (the cache holds the re-encoded ids)</div>"
        )
    return (
        f'<h2 id="{_anchor(sample.sample_id)}">{html.escape(sample.sample_id)}</h2>\n'
        f'<div class="meta">{sample.num_targets} supervised of {sample.num_tokens} tokens; '
        f"mean p(target) {stats.mean_target_prob:.3f}; top-1 agreement {stats.top1_agreement:.3f}; "
        f"{stats.outside_topk} outside the top-k; images {sizes}; visual tokens {visual}; "
        f"grid (t x h x w) {grid}</div>\n{flags}"
        f'<div class="thumbs">{thumbs}</div>\n'
        f'<div class="toks">{_tokens_html(sample, view, text, top_k, placeholders)}</div>'
    )


def _written_cell(r: RowStats) -> str:
    if not r.teacher_written:
        return ""
    return ", ".join(
        ["yes"] + (["hit max_new_tokens"] if r.hit_limit else []) + (["ids changed"] if r.ids_changed else [])
    )


def _index(ranked: list[RowStats], ranking: str, by_rank: dict[str, list[RowStats]]) -> str:
    def link(sid: str) -> str:
        return f'<a href="#{_anchor(sid)}">{html.escape(sid)}</a>'

    quick = "".join(
        f"<li>{html.escape(RANKINGS[key][1])}: {', '.join(link(r.sample_id) for r in rows[:QUICK_ROWS])}</li>"
        for key, rows in by_rank.items()
        if rows
    )
    head = "<tr><th>#</th><th>sample</th><th>mean p(target)</th><th>min p</th><th>mean tail</th><th>entropy</th><th>outside top-k</th><th>targets</th><th>tokens</th><th>teacher-written</th></tr>"
    body = "".join(
        f"<tr><td>{i + 1}</td><td>{link(r.sample_id)}</td><td>{r.mean_target_prob:.3f}</td>"
        f"<td>{r.min_target_prob:.3f}</td><td>{r.mean_tail:.2e}</td><td>{r.mean_entropy:.3f}</td>"
        f"<td>{r.outside_topk}</td><td>{r.num_targets}</td><td>{r.num_tokens}</td><td>{_written_cell(r)}</td></tr>"
        for i, r in enumerate(ranked[:INDEX_ROWS])
    )
    return (
        f'<h1 id="index">Index: rows by {html.escape(RANKINGS[ranking][1])}</h1>\n<ul>{quick}</ul>\n'
        f'<div class="index-box"><table class="index">{head}{body}</table></div>'
    )


def _sections(
    reader: Any, prof: Profile, chosen: list[str], text: TokenText, rows: RowSource | None
) -> list[str]:
    """One HTML section per chosen sample: its tokens coloured by p(target), image and context."""
    stats = {r.sample_id: r for r in prof.rows}
    placeholder_ids = Manifest(reader.manifest).placeholder_ids
    placeholders = {int(v) for v in placeholder_ids.values()}
    sections = []
    for sid in chosen:
        sample = reader.get(sid)
        row = rows.rows.get(sid) if rows is not None else None
        view = row_view(sample, row, rows.encoder if rows is not None else None, placeholder_ids)
        sections.append(_section(sample, stats[sid], view, text, reader.top_k, placeholders))
    return sections


def write_report(
    reader: Any,
    path: str | Path,
    prof: Profile,
    *,
    tokenizer: Any = None,
    rows: RowSource | None = None,
    ranking: str = "p_target",
    limit: int = DEFAULT_LIMIT,
    select: list[str] | None = None,
    summaries: list[tuple[str, dict[str, Any], Profile]] | None = None,
    notes: list[str] | None = None,
) -> int:
    """Write the report of ``reader`` (profiled as ``prof``) to ``path``; return how many rows got a section.

    ``select``: exactly these sample ids (else the first ``limit`` by ``ranking``); ``summaries``:
    (label, :func:`summarise` dict, profile) of each cache to show, this one first (``--compare``);
    ``rows``: dataset rows and encoder for images and context; ``notes``: lines shown under the title.
    """
    ranked = rank_rows(prof.rows, ranking)
    chosen = list(select) if select else [r.sample_id for r in ranked[:limit]]
    sections = _sections(reader, prof, chosen, TokenText(tokenizer), rows)
    by_rank = {key: rank_rows(prof.rows, key) for key in RANKINGS}
    for key, keep in RANKING_ROWS.items():
        by_rank[key] = [r for r in by_rank[key] if keep(r)]
    summaries = summaries or []
    figure = base64.b64encode(
        figure_bytes(histograms([(lbl, p) for lbl, _, p in summaries] or [("cache", prof)]))
    ).decode()
    blocks = "".join(
        f"<div><b>{html.escape(lbl)}</b><pre>{html.escape(format_summary(s))}</pre></div>"
        for lbl, s, _ in summaries
    )
    legend = "".join(f'<span style="background:{_colour(p)}">{p:.1f}</span>' for p in np.linspace(0, 1, 6))
    note_html = "".join(f'<div class="note">{html.escape(n)}</div>' for n in notes or [])
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>teacher cache: {len(reader)} rows</title><style>{_CSS}</style></head><body>\n"
        f"<h1>Teacher cache: {len(reader)} rows, top-{reader.top_k}</h1>\n{note_html}"
        f'<div class="summaries">{blocks}</div>\n'
        f'<h1 id="histograms">Histograms</h1>\n<img class="hist" alt="histograms" src="data:image/png;base64,{figure}">\n'
        + _index(ranked, ranking, by_rank)
        + f'\n<h1 id="rows">Rows ({len(sections)} shown)</h1>\n'
        f'<div class="legend">p(target): {legend} &mdash; grey: context (not supervised); hover a token for the teacher\'s top-{TOP_SHOWN}</div>\n'
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
    with atomic_write(path) as fh:  # a full disk is one line and leaves the old page
        fh.write(page)
    return len(sections)
