"""``distill inspect --html FILE``: one self-contained page of supervised tokens coloured by the teacher.

Each sample is a paragraph of its supervised target tokens; a token's background goes from red
(teacher gives the target probability 0) to green (probability 1), and hovering shows the position,
the target's probability and the teacher's top-5. Inline CSS, no scripts, no external assets: the
file can be attached to an issue or opened offline.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.inspection.summary import TOP_SHOWN, TokenText, iter_samples, token_stats, top_entries

DEFAULT_MAX_SAMPLES = 200

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1em; margin: 1.2em 0 0.3em; font-family: monospace; }
.meta { color: #666; font-size: 0.85em; }
.toks { font-family: monospace; line-height: 1.9; white-space: pre-wrap; word-break: break-all; }
.t { padding: 1px 0; border-radius: 2px; cursor: default; }
.t:hover { outline: 1px solid #000; }
.legend span { display: inline-block; width: 3em; text-align: center; font-size: 0.8em; }
"""


def _colour(p: float) -> str:
    """Background for a target probability: hue 0 (red) at p = 0 to 120 (green) at p = 1."""
    p = min(max(p, 0.0), 1.0) if np.isfinite(p) else 0.0
    return f"hsl({120.0 * p:.0f}, 70%, 82%)"


def _display(text: str) -> str:
    """Token text as shown inline: escaped newlines become a visible marker plus a real line break."""
    return html.escape(text.replace("\\n", "\u21b5\n"))


def _sample_html(sample: Any, text: TokenText, top_k: int) -> str:
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
    agree = float(st.top1_agrees.mean()) if sample.num_targets else float("nan")
    return (
        f'<h2 id="{html.escape(sample.sample_id, quote=True)}">{html.escape(sample.sample_id)}</h2>\n'
        f'<div class="meta">{sample.num_targets} supervised of {sample.num_tokens} tokens; '
        f"top-1 agreement {agree:.3f}; mean p(target) {float(st.target_prob.mean()) if sample.num_targets else 0:.3f}"
        f'</div>\n<div class="toks">{"".join(spans)}</div>'
    )


def write_html(
    reader: Any, path: str | Path, tokenizer: Any = None, max_samples: int = DEFAULT_MAX_SAMPLES
) -> int:
    """Write the page for the first ``max_samples`` samples of ``reader`` to ``path``; return how many."""
    text = TokenText(tokenizer)
    parts, n = [], 0
    for sample in iter_samples(reader):
        if n >= max_samples:
            break
        parts.append(_sample_html(sample, text, reader.top_k))
        n += 1
    legend = "".join(f'<span style="background:{_colour(p)}">{p:.1f}</span>' for p in np.linspace(0, 1, 6))
    more = f" (first {n} of {len(reader)})" if len(reader) > n else ""
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>teacher cache: {n} samples</title><style>{_CSS}</style></head><body>\n"
        f"<h1>Teacher cache: {n} samples{more}, top-{reader.top_k}</h1>\n"
        f'<div class="legend">p(target): {legend} &mdash; hover a token for the teacher\'s top-{TOP_SHOWN}</div>\n'
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return n
