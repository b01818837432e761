"""``distill inspect --audit``: checks that a teacher cache honours the alignment contract.

Each check returns human-readable problems naming the sample; :func:`audit` returns them all (an empty
list means the cache passed). What is checked, with the thresholds:

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
- **special targets**: no target is a special/added-special token or an image/video placeholder (ids from
  the manifest's encoding settings), except the template's end-of-turn ``<|im_end|>`` (the trailing
  ``"\\n"`` after it is a plain token and may be supervised).
- **off-by-one signature** (over >= ``SHIFT_MIN_TOKENS`` adjacent target pairs): the teacher's top-1
  matches the previous or next position's target more often than its own by more than ``SHIFT_MARGIN``
  (0.1) while its own agreement is below ``SHIFT_OWN_LOW`` (0.5).
- **tokenizer** (when one is given): its hash equals the one in the manifest's fingerprint.
- **re-encoding** (with a config): up to ``max_rows`` cached samples (seeded) are re-encoded; positions,
  target ids (first response token included), ``num_tokens`` and the encoding hash must equal the cache's.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from typing import Any

import numpy as np

from pipeline.cache.format import QUANTIZED, CachedSample, Layout
from pipeline.errors import DistillError

MASS_TOL = 1e-4
SHIFT_MIN_TOKENS = 200
SHIFT_MARGIN = 0.1
SHIFT_OWN_LOW = 0.5
END_OF_TURN = "<|im_end|>"
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


def check_sample(
    s: CachedSample,
    top_k: int,
    vocab_size: int,
    cells: Cells,
    forbidden: dict[int, str],
    out: Findings,
) -> None:
    """Structure, value, mass, target-consistency and special-target checks of one sample."""
    sid = repr(s.sample_id)
    pos, tgt, ids = s.positions, s.target_ids, s.topk_ids
    if s.topk_ids.shape != (s.num_targets, top_k):
        out.add("shape", f"sample {sid}: top-k block {s.topk_ids.shape}, expected ({s.num_targets}, {top_k})")
        return
    bad = (pos < 1) | (pos >= s.num_tokens)
    if bad.any():
        out.add(
            "position",
            f"sample {sid}: {int(bad.sum())} position(s) outside [1, {s.num_tokens}), "
            f"first {int(pos[_first(bad)])}",
        )
    if pos.size > 1 and (np.diff(pos) <= 0).any():
        out.add("position", f"sample {sid}: positions not strictly ascending")
    for name, arr in (("target", tgt), ("top-k", ids)):
        bad = (arr < 0) | (arr >= vocab_size)
        if bad.any():
            out.add("vocab", f"sample {sid}: {name} id {int(arr[bad][0])} outside [0, {vocab_size})")
    srt = np.sort(ids, axis=1)
    if top_k > 1 and (srt[:, 1:] == srt[:, :-1]).any(axis=1).any():
        out.add("top-k", f"sample {sid}: an id appears twice in one position's top-k")
    lps, tail, tlp = s.topk_logprobs, s.tail_logprobs, s.target_logprobs
    with np.errstate(invalid="ignore"):
        if top_k > 1 and (lps[:, 1:] > lps[:, :-1] + 1e-6).any():
            out.add("top-k", f"sample {sid}: top-k not sorted by descending logprob")
    for name, arr in (("top-k", lps), ("tail", tail), ("target", tlp)):
        bad = np.isnan(arr) | np.isposinf(arr)
        if bad.any():
            at = int(pos[_first(bad.reshape(len(pos), -1).any(axis=1))]) if pos.size else -1
            out.add("non-finite", f"sample {sid}: {name} logprob NaN or +inf at position {at}")
            return  # the mass checks below would only repeat this
    for name, arr in (("top-1", lps[:, 0] if top_k else np.zeros(0)), ("target", tlp)):
        if np.isneginf(arr).any():
            out.add(
                "non-finite",
                f"sample {sid}: {name} logprob -inf at position {int(pos[_first(np.isneginf(arr))])}",
            )
    lo, hi = cells.bounds(lps)
    tail_lo, tail_hi = cells.bounds(tail)
    top_lo, top_hi = lo.sum(axis=1), hi.sum(axis=1)
    bad = np.isneginf(tail) & (top_hi < 1.0 - MASS_TOL)
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
    match = ids == tgt[:, None]
    inside = match.any(axis=1)
    col = match.argmax(axis=1)
    rows = np.arange(len(pos))
    p_t = np.exp(tlp.astype(np.float64))
    bad = inside & ((p_t < lo[rows, col] - MASS_TOL) | (p_t > hi[rows, col] + MASS_TOL))
    bad |= ~inside & (p_t > tail_hi + MASS_TOL)
    if bad.any():
        i = _first(bad)
        where = (
            f"its top-k entry {float(np.exp(lps[i, col[i]])):.6f}" if inside[i] else f"tail {tail_hi[i]:.6f}"
        )
        out.add(
            "target",
            f"sample {sid}: target probability {p_t[i]:.6f} inconsistent with {where} at "
            f"position {int(pos[i])}",
        )
    hits = [i for i, t in enumerate(tgt.tolist()) if t in forbidden]
    if hits:
        i = hits[0]
        out.add(
            "special-target",
            f"sample {sid}: {len(hits)} target(s) are special or placeholder tokens, "
            f"first {forbidden[int(tgt[i])]} (id {int(tgt[i])}) at position {int(pos[i])}",
        )


class ShiftCounter:
    """Accumulates teacher top-1 agreement with each token's own, previous and next target."""

    def __init__(self) -> None:
        self.own = self.own_n = self.prev = self.next = self.pair_n = 0

    def add(self, s: CachedSample) -> None:
        if s.num_targets == 0 or s.topk_ids.shape[1] == 0:
            return
        top1, tgt = s.topk_ids[:, 0], s.target_ids
        self.own += int((top1 == tgt).sum())
        self.own_n += len(tgt)
        # Only adjacent positions: across a gap (e.g. two assistant turns) the neighbour is unrelated.
        adjacent = np.diff(s.positions) == 1
        self.prev += int((top1[1:] == tgt[:-1])[adjacent].sum())
        self.next += int((top1[:-1] == tgt[1:])[adjacent].sum())
        self.pair_n += int(adjacent.sum())

    def problem(self) -> str | None:
        """The off-by-one message, or None (also None below ``SHIFT_MIN_TOKENS`` adjacent pairs)."""
        if self.pair_n < SHIFT_MIN_TOKENS:
            return None
        own = self.own / self.own_n
        for name, hits, cause in (
            ("next", self.next, "teacher logits taken at j instead of j-1?"),
            ("previous", self.prev, "teacher logits taken at j-2, or labels rolled?"),
        ):
            rate = hits / self.pair_n
            if rate > own + SHIFT_MARGIN and own < SHIFT_OWN_LOW:
                return (
                    f"teacher top-1 matches the {name} position's target on {rate:.1%} of {self.pair_n} "
                    f"adjacent tokens but its own target on only {own:.1%}: off by one ({cause})"
                )
        return None


def forbidden_targets(tokenizer: Any, placeholder_ids: dict[str, int] | None) -> dict[int, str]:
    """Ids that must never be a target -> display name: special tokens and placeholders, minus ``<|im_end|>``.

    Without a tokenizer only the manifest's placeholder ids are known.
    """
    out = {int(v): k for k, v in (placeholder_ids or {}).items()}
    if tokenizer is None:
        return out
    for tid in getattr(tokenizer, "all_special_ids", []) or []:
        out[int(tid)] = tokenizer.convert_ids_to_tokens(int(tid))
    for tid, tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(tok, "special", False):
            out[int(tid)] = str(tok)
    end = tokenizer.get_vocab().get(END_OF_TURN, getattr(tokenizer, "eos_token_id", None))
    out.pop(int(end) if end is not None else -1, None)
    return out


def tokenizer_problem(tokenizer: Any, fingerprint: dict[str, Any]) -> str | None:
    """A message when ``tokenizer`` is not the one the cache's fingerprint records (None when equal)."""
    from pipeline.cache.manifest import compare_fingerprints
    from pipeline.fingerprint import tokenizer_hash

    recorded = fingerprint.get("tokenizer")
    if tokenizer is None or not isinstance(recorded, dict):
        return None
    diffs = compare_fingerprints(recorded, tokenizer_hash(tokenizer))
    if not diffs:
        return None
    return f"the given tokenizer differs from the cache's ({', '.join(diffs)}): token checks are unreliable"


def audit(
    reader: Any,
    tokenizer: Any = None,
    cfg: Any = None,
    max_rows: int = 64,
    seed: int = 0,
    encoder: Any = None,
) -> list[str]:
    """Every problem found in the cache behind ``reader`` (empty list: the cache passed).

    ``tokenizer`` enables the special-token check beyond placeholders; ``cfg`` (a ``DistillConfig`` or
    anything with its ``model``/``data`` fields) enables the re-encoding check of up to ``max_rows``
    samples drawn with ``seed``; ``encoder`` reuses an existing ``RowEncoder`` built from ``cfg``.
    """
    out = Findings()
    manifest = reader.manifest
    fingerprint = manifest.get("fingerprint", {}) or {}
    if cfg is not None:
        encoder = reencode_check(reader, cfg, out, max_rows=max_rows, seed=seed, encoder=encoder)
        tokenizer = tokenizer if tokenizer is not None else encoder.tokenizer
    if (msg := tokenizer_problem(tokenizer, fingerprint)) is not None:
        out.add("tokenizer", msg)
    cells = Cells(manifest.get("layout"))
    placeholders = (fingerprint.get("encoding", {}) or {}).get("placeholder_ids")
    forbidden = forbidden_targets(tokenizer, placeholders)
    shift = ShiftCounter()
    n_samples = n_targets = 0
    for sample in _read_all(reader, out):
        n_samples += 1
        n_targets += sample.num_targets
        check_sample(sample, reader.top_k, reader.vocab_size, cells, forbidden, out)
        shift.add(sample)
    if (msg := shift.problem()) is not None:
        out.add("off-by-one", msg)
    counts = manifest.get("counts", {}) or {}
    for key, found in (("cached", n_samples), ("targets", n_targets)):
        if counts.get(key) is not None and counts[key] != found:
            out.add("manifest", f"counts.{key} is {counts[key]} but the shards hold {found}")
    return out.lines()


def _read_all(reader: Any, out: Findings) -> Iterable[CachedSample]:
    """Every readable sample; an unreadable batch becomes a finding instead of ending the audit."""
    from pipeline.inspection.summary import iter_samples

    try:
        yield from iter_samples(reader)
    except (DistillError, ValueError) as exc:
        out.add("unreadable", f"{exc} (samples after it were not checked)")


def choose_samples(sample_ids: list[str], max_rows: int, seed: int) -> list[str]:
    """Up to ``max_rows`` sample ids, drawn reproducibly (sorted input, seeded), in sorted order."""
    ids = sorted(sample_ids)
    return sorted(random.Random(seed).sample(ids, min(max_rows, len(ids))))


def json_normal(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), to compare with a manifest."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def reencode_check(
    reader: Any, cfg: Any, out: Findings, max_rows: int = 64, seed: int = 0, encoder: Any = None
) -> Any:
    """Re-encode up to ``max_rows`` cached samples with ``cfg``; record every difference. Returns the encoder.

    Rows are looked up by sample_id in all of the config's dataset files (``data.dataset`` and
    ``data.val_dataset``): the cache's split name is not needed, and a row the config cannot find is
    itself a finding.
    """
    from pipeline.cache.manifest import compare_fingerprints
    from pipeline.data import Row, read_rows
    from pipeline.encoding import RowEncoder

    if encoder is None:
        encoder = RowEncoder.from_config(cfg)
    recorded = (reader.manifest.get("fingerprint", {}) or {}).get("encoding")
    if isinstance(recorded, dict):
        diffs = compare_fingerprints(recorded, json_normal(encoder.settings()))
        if diffs:
            shown = "; ".join(f"{k}: cache {a!r}, config {b!r}" for k, (a, b) in list(diffs.items())[:5])
            out.add("encoding-settings", f"the config encodes differently from the cache: {shown}")
    rows: dict[str, Any] = {}
    for path in [*(cfg.data.dataset or []), *(cfg.data.val_dataset or [])]:
        for r in read_rows(path):
            rows.setdefault(r.sample_id, r)
    for sid in choose_samples(list(reader.sample_ids), max_rows, seed):
        row = rows.get(sid)
        if not isinstance(row, Row):
            why = "not in the config's dataset files" if row is None else f"a bad row now ({row.reason})"
            out.add("re-encode", f"sample {sid!r}: {why}")
            continue
        try:
            enc = encoder.encode(row)
        except DistillError as exc:
            out.add("re-encode", f"sample {sid!r}: cached, but no longer encodes: {exc}")
            continue
        try:
            cached = reader.get(sid)
        except (DistillError, ValueError):
            continue  # reported as unreadable by the sample pass
        if found := encoding_differences(cached, enc):
            out.add("re-encode", f"sample {sid!r}: {'; '.join(found)}")
    return encoder


def encoding_differences(cached: CachedSample, enc: Any) -> list[str]:
    """How ``cached`` differs from ``enc`` (an ``EncodedRow``): num_tokens, positions, targets, hash."""
    diffs: list[str] = []
    ids = enc.inputs["input_ids"]
    if cached.num_tokens != len(ids):
        diffs.append(f"num_tokens {cached.num_tokens} in the cache, {len(ids)} re-encoded")
    want = np.asarray(enc.target_positions(), dtype=np.int64)
    got = np.asarray(cached.positions, dtype=np.int64)
    if want.size and (got.size == 0 or got[0] != want[0]):
        diffs.append(
            f"first supervised position (the first response token) is {want[0]} re-encoded, "
            f"{int(got[0]) if got.size else 'none'} in the cache"
        )
    if got.shape != want.shape or (got != want).any():
        n = min(len(got), len(want))
        i = _first(got[:n] != want[:n]) if (got[:n] != want[:n]).any() else n
        diffs.append(f"positions differ ({len(got)} cached, {len(want)} re-encoded; first at target {i})")
    else:
        labels = np.asarray(enc.inputs["labels"], dtype=np.int64)[want]
        bad = labels != cached.target_ids
        if bad.any():
            i = _first(bad)
            diffs.append(
                f"{int(bad.sum())} target id(s) differ, first at position {int(want[i])}: "
                f"cache {int(cached.target_ids[i])}, labels {int(labels[i])}"
            )
    if cached.encoding_hash != enc.encoding_hash:
        diffs.append(
            f"encoding hash differs (cache {cached.encoding_hash[:12]}, re-encoded {enc.encoding_hash[:12]})"
        )
    return diffs
