"""Format-level checks of decoded cache rows: structure, values, probability mass, target consistency.

These checks need only the cache itself (its layout, top-k and vocabulary width): no tokenizer, no
model. ``distill inspect --audit`` (:mod:`pipeline.inspection.audit`) runs them over every sample and
adds the checks that need a tokenizer or a config. Thresholds:

- **structure**: every position in ``[1, num_tokens)`` and strictly ascending; every target and top-k
  id in ``[0, vocab_size)``; no id twice in one position's top-k; top-k sorted by descending logprob.
- **values**: no NaN or +inf anywhere; no -inf for the top-1 or the target (the teacher gave them mass);
  the tail is -inf only when the top-k holds all the mass (within ``MASS_TOL``).
- **mass**: ``sum(exp(top-k)) + exp(tail)`` is 1 within ``MASS_TOL`` (1e-4). A quantized cache stores
  each probability as a level (a cell of the sqrt(p) quantiser) and decodes it without renormalising,
  so its decoded sum drifts by up to ~1% (measured p99 0.2-1% at k=8..256); the check there is that 1
  lies between the sums of the cells' lower and upper bounds, widened by ``MASS_TOL``: "some
  distribution that encodes to these levels sums to 1". It never fires on a correct cache and catches
  mass errors larger than the cells' width (~1-3% summed over a position).
- **target consistency**: a target inside the top-k has that entry's probability (same cell, or within
  ``MASS_TOL`` for fp32); a target outside it has at most the tail's mass.
- **forbidden targets**: no target is one of the ids the caller forbids (placeholders, special tokens).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.cache.format import QUANTIZED, CachedSample, Layout

MASS_TOL = 1e-4
SHOWN_PER_CHECK = 10  # problems listed per check; the rest are counted in one line


class Findings:
    """Problems grouped by check, capped per check so a broken million-sample cache stays readable."""

    def __init__(self, cap: int = SHOWN_PER_CHECK):
        self.cap = cap
        self._shown: dict[str, list[str]] = {}
        self._count: dict[str, int] = {}

    def add(self, check: str, message: str) -> None:
        self._count[check] = self._count.get(check, 0) + 1
        shown = self._shown.setdefault(check, [])
        if len(shown) < self.cap:
            shown.append(f"{check}: {message}")

    def lines(self) -> list[str]:
        out: list[str] = []
        for check, shown in self._shown.items():
            out.extend(shown)
            if (rest := self._count[check] - len(shown)) > 0:
                out.append(f"{check}: ... and {rest} more")
        return out


class Cells:
    """Probability bounds of the quantiser cell each decoded value came from (``None`` layout: exact).

    Built from the format's own quantiser (``Quantizer.table`` and ``Quantizer.cell_bounds``) rather
    than a copy of its algebra; a decoded logprob is mapped back to its level by exact lookup in the
    table. A value that is not in the table (a test's hand-made reader, a renormalising reader)
    is taken as exact, which only makes the checks stricter.
    """

    def __init__(self, layout: dict[str, Any] | None):
        self.table: np.ndarray | None = None
        if not layout or layout.get("logprob_encoding") != QUANTIZED:
            return
        q = Layout.from_dict(layout).quantizer
        self.table = q.table().astype(np.float64)  # [L]: ascending, -inf at level 0
        lower, upper = q.cell_bounds()  # [L] exact probability bounds of each level's cell
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)

    def bounds(self, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) probability bounds (float64, shape of ``logprobs``)."""
        lp = logprobs.astype(np.float64)
        p = np.exp(lp)
        if self.table is None:
            return p, p
        # Several top levels can decode to the same clipped logprob 0: take the union of their cells.
        first = np.clip(np.searchsorted(self.table, lp, side="left"), 0, len(self.table) - 1)
        last = np.clip(np.searchsorted(self.table, lp, side="right") - 1, 0, len(self.table) - 1)
        exact = self.table[first] == lp
        return np.where(exact, self.lower[first], p), np.where(exact, self.upper[last], p)


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _structure(s: CachedSample, top_k: int, vocab_size: int, out: Findings) -> bool:
    """Shape, position, id-range and top-k order checks; False when the shape is too wrong to go on."""
    sid = repr(s.sample_id)
    pos, ids = s.positions, s.topk_ids
    if ids.shape != (s.num_targets, top_k):
        out.add("shape", f"sample {sid}: top-k block {ids.shape}, expected ({s.num_targets}, {top_k})")
        return False
    bad = (pos < 1) | (pos >= s.num_tokens)
    if bad.any():
        out.add(
            "position",
            f"sample {sid}: {int(bad.sum())} position(s) outside [1, {s.num_tokens}), "
            f"first {int(pos[_first(bad)])}",
        )
    if pos.size > 1 and (np.diff(pos) <= 0).any():
        out.add("position", f"sample {sid}: positions not strictly ascending")
    for name, arr in (("target", s.target_ids), ("top-k", ids)):
        bad = (arr < 0) | (arr >= vocab_size)
        if bad.any():
            out.add("vocab", f"sample {sid}: {name} id {int(arr[bad][0])} outside [0, {vocab_size})")
    srt = np.sort(ids, axis=1)
    if top_k > 1 and (srt[:, 1:] == srt[:, :-1]).any(axis=1).any():
        out.add("top-k", f"sample {sid}: an id appears twice in one position's top-k")
    with np.errstate(invalid="ignore"):
        if top_k > 1 and (s.topk_logprobs[:, 1:] > s.topk_logprobs[:, :-1] + 1e-6).any():
            out.add("top-k", f"sample {sid}: top-k not sorted by descending logprob")
    return True


def check_sample(
    s: CachedSample,
    top_k: int,
    vocab_size: int,
    cells: Cells,
    forbidden: dict[int, str],
    out: Findings,
) -> None:
    """Structure, value, mass, target-consistency and forbidden-target checks of one sample.

    ``forbidden`` maps ids that must never be a target to a display name (empty: no such check).
    """
    if not _structure(s, top_k, vocab_size, out) or not _finite(s, top_k, out):
        return
    lo, hi = cells.bounds(s.topk_logprobs)
    tail_lo, tail_hi = cells.bounds(s.tail_logprobs)
    _mass(s, lo, hi, tail_lo, tail_hi, out)
    _target(s, lo, hi, tail_hi, out)
    pos, tgt = s.positions, s.target_ids
    hits = [i for i, t in enumerate(tgt.tolist()) if t in forbidden]
    if hits:
        i = hits[0]
        out.add(
            "special-target",
            f"sample {s.sample_id!r}: {len(hits)} target(s) are special or placeholder tokens, "
            f"first {forbidden[int(tgt[i])]} (id {int(tgt[i])}) at position {int(pos[i])}",
        )


def _finite(s: CachedSample, top_k: int, out: Findings) -> bool:
    """No NaN or +inf logprob (False: the mass checks would only repeat it); a -inf top-1 or target
    logprob is reported and the checks go on."""
    sid, pos = repr(s.sample_id), s.positions
    lps, tail, tlp = s.topk_logprobs, s.tail_logprobs, s.target_logprobs
    for name, arr in (("top-k", lps), ("tail", tail), ("target", tlp)):
        bad = np.isnan(arr) | np.isposinf(arr)
        if bad.any():
            at = int(pos[_first(bad.reshape(len(pos), -1).any(axis=1))]) if pos.size else -1
            out.add("non-finite", f"sample {sid}: {name} logprob NaN or +inf at position {at}")
            return False
    for name, arr in (("top-1", lps[:, 0] if top_k else np.zeros(0)), ("target", tlp)):
        if np.isneginf(arr).any():
            out.add(
                "non-finite",
                f"sample {sid}: {name} logprob -inf at position {int(pos[_first(np.isneginf(arr))])}",
            )
    return True


def _mass(
    s: CachedSample, lo: np.ndarray, hi: np.ndarray, tail_lo: np.ndarray, tail_hi: np.ndarray, out: Findings
) -> None:
    """Top-k plus tail mass is 1 within the quantiser's cells; an empty tail needs a full top-k."""
    sid, pos = repr(s.sample_id), s.positions
    top_lo, top_hi = lo.sum(axis=1), hi.sum(axis=1)
    bad = np.isneginf(s.tail_logprobs) & (top_hi < 1.0 - MASS_TOL)
    if bad.any():
        i = _first(bad)
        out.add(
            "mass",
            f"sample {sid}: tail is -inf but the top-k holds only {top_hi[i]:.6f} at position {int(pos[i])}",
        )
    bad = (top_lo + tail_lo > 1.0 + MASS_TOL) | (top_hi + tail_hi < 1.0 - MASS_TOL)
    if bad.any():
        i = _first(bad)
        mid = 0.5 * (top_lo[i] + top_hi[i] + tail_lo[i] + tail_hi[i])
        out.add(
            "mass",
            f"sample {sid}: top-k + tail mass {mid:.6f} (off 1 by more than {MASS_TOL:g}) at "
            f"position {int(pos[i])} ({int(bad.sum())} of {len(pos)} positions)",
        )


def _target(s: CachedSample, lo: np.ndarray, hi: np.ndarray, tail_hi: np.ndarray, out: Findings) -> None:
    """The target's stored probability agrees with its top-k entry (or, outside the top-k, the tail)."""
    sid, pos, tgt, ids = repr(s.sample_id), s.positions, s.target_ids, s.topk_ids
    match = ids == tgt[:, None]
    inside = match.any(axis=1)
    col = match.argmax(axis=1)
    rows = np.arange(len(pos))
    p_t = np.exp(s.target_logprobs.astype(np.float64))
    bad = inside & ((p_t < lo[rows, col] - MASS_TOL) | (p_t > hi[rows, col] + MASS_TOL))
    bad |= ~inside & (p_t > tail_hi + MASS_TOL)
    if bad.any():
        i = _first(bad)
        entry = float(np.exp(s.topk_logprobs[i, col[i]]))
        where = f"its top-k entry {entry:.6f}" if inside[i] else f"tail {tail_hi[i]:.6f}"
        out.add(
            "target",
            f"sample {sid}: target probability {p_t[i]:.6f} inconsistent with {where} at "
            f"position {int(pos[i])}",
        )
