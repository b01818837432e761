"""The teacher's per-token entropy profile from a cache: how uncertain it is, and where.

A distillation signal beyond the teacher's text exists only where the teacher is uncertain: at a token
it predicts with probability ~1, its distribution says what its argmax says. This module reduces a
cache to the numbers that decide it: the mean entropy per supervised token, the share of tokens above
a threshold (0.5 nats by default: roughly a 80/20 split between two tokens, or worse), and the same
numbers per token class when the caller supplies a classifier (a dataset knows which of its words
name what the image shows and which are wording; the library does not).

Entropies are those of :func:`pipeline.inspection.tokens.token_stats`: over the k+1 cached categories
(top-k ids + one tail bucket). Merging the tail's ids into one bucket can only lower entropy, so the
numbers are lower bounds of the full-vocabulary entropy, tight when the tail mass is small (check
``tail_p90``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.inspection.tokens import iter_samples, token_stats

DEFAULT_THRESHOLD = 0.5  # nats


def _block(entropy: np.ndarray, tail: np.ndarray, threshold: float) -> dict[str, float]:
    if entropy.size == 0:
        return {"tokens": 0, "mean": float("nan"), "share_above": float("nan"), "tail_p90": float("nan")}
    return {
        "tokens": int(entropy.size),
        "mean": float(entropy.mean()),
        "share_above": float((entropy > threshold).mean()),
        "tail_p90": float(np.percentile(tail, 90)),
    }


def entropy_profile(
    reader: Any,
    classify: Callable[[int], str] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    sample_ids: set[str] | None = None,
) -> dict[str, Any]:
    """Entropy statistics (nats) of every supervised token in ``reader``.

    ``classify`` maps a target token id to a class name (e.g. ``object`` / ``phrasing``); each class
    gets its own block, with ``share_of_tokens`` its fraction of all targets. ``sample_ids``: only
    these rows (e.g. one split of a cache that holds several). Returns ``threshold``, ``rows``, the
    overall block (``tokens``, ``mean``, ``share_above``, ``tail_p90``) and ``by_class``.
    """
    entropies: list[np.ndarray] = []
    tails: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    rows = 0
    for sample in iter_samples(reader):
        if sample_ids is not None and sample.sample_id not in sample_ids:
            continue
        st = token_stats(sample)
        entropies.append(st.entropy)
        tails.append(st.tail_mass)
        targets.append(np.asarray(sample.target_ids, dtype=np.int64))
        rows += 1
    entropy = np.concatenate(entropies) if entropies else np.zeros(0)
    tail = np.concatenate(tails) if tails else np.zeros(0)
    out: dict[str, Any] = {"threshold": threshold, "rows": rows, **_block(entropy, tail, threshold)}
    by_class: dict[str, dict[str, float]] = {}
    if classify is not None and entropy.size:
        ids = np.concatenate(targets)
        cache: dict[int, str] = {}
        labels = np.array([cache.setdefault(int(t), classify(int(t))) for t in ids])
        for name in sorted(set(labels.tolist())):
            mask = labels == name
            by_class[name] = {
                **_block(entropy[mask], tail[mask], threshold),
                "share_of_tokens": float(mask.mean()),
            }
    out["by_class"] = by_class
    return out


def format_profile(profile: dict[str, Any]) -> str:
    """A few lines of text: the overall numbers, then one line per class."""
    t = profile["threshold"]
    lines = [
        f"rows {profile['rows']}, supervised tokens {profile['tokens']}: mean entropy "
        f"{profile['mean']:.3f} nats/token, {100 * profile['share_above']:.1f}% above {t} nats, "
        f"tail mass p90 {profile['tail_p90']:.2g}"
    ]
    for name, b in profile["by_class"].items():
        lines.append(
            f"  {name:<10} {100 * b['share_of_tokens']:5.1f}% of tokens: mean {b['mean']:.3f}, "
            f"{100 * b['share_above']:.1f}% above {t}"
        )
    return "\n".join(lines)
