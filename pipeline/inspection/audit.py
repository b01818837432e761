"""``distill inspect --audit``: checks that a teacher cache honours the alignment contract.

Each check returns human-readable problems naming the sample; :func:`audit` returns them all (an empty
list means the cache passed). What is checked, with the thresholds:

- the format-level checks of :mod:`pipeline.cache.validation` (structure, values, probability mass,
  target consistency; thresholds there), on every sample;
- **special targets**: no target is a special/added-special token or an image/video placeholder (ids from
  the manifest's encoding settings), except the template's stop ids: with a config, the encoder's
  (``pipeline.generation.stop_token_ids``: its end-of-turn, e.g. Qwen's, then its stop words and eos);
  without, the stop words the fingerprint's encoding settings record, resolved through the tokenizer,
  and its eos (a token after the end-of-turn, e.g. a trailing newline, is a plain token).
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

from pipeline.cache.cachedir import Manifest
from pipeline.cache.format import CachedSample
from pipeline.cache.validation import Cells, Findings, check_sample
from pipeline.errors import DistillError
from pipeline.inspection.tokens import iter_samples

SHIFT_MIN_TOKENS = 200
SHIFT_MARGIN = 0.1
SHIFT_OWN_LOW = 0.5


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


def end_of_turn_ids(tokenizer: Any, encoding: dict[str, Any] | None, encoder: Any = None) -> list[int]:
    """Stop ids a target may be: ``encoder``'s (:func:`pipeline.generation.stop_token_ids`), else the
    stop words recorded in the fingerprint's ``encoding`` settings resolved through ``tokenizer``, and
    its eos (empty without a tokenizer)."""
    from pipeline.generation import resolve_stop_ids, stop_token_ids

    if encoder is not None:
        return stop_token_ids(encoder)
    if tokenizer is None:
        return []
    words = ((encoding or {}).get("template_meta") or {}).get("stop_words") or []
    return resolve_stop_ids(tokenizer, words)


def forbidden_targets(
    tokenizer: Any, placeholder_ids: dict[str, int] | None, allowed: Iterable[int] = ()
) -> dict[int, str]:
    """Ids that must never be a target -> display name: special tokens and placeholders, minus
    ``allowed`` (the template's stop ids, :func:`end_of_turn_ids`).

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
    for tid in allowed:
        out.pop(int(tid), None)
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
    dataset: str | None = None,
) -> list[str]:
    """Every problem found in the cache behind ``reader`` (empty list: the cache passed).

    ``tokenizer`` enables the special-token check beyond placeholders; ``cfg`` (a ``DistillConfig`` or
    anything with its ``model``/``data`` fields) enables the re-encoding check of up to ``max_rows``
    samples drawn with ``seed``; ``encoder`` reuses an existing ``RowEncoder`` built from ``cfg``.
    ``dataset`` (else ``cfg``'s file for the split the cache directory is named after) enables the
    coverage check training makes: every row of the dataset cached or recorded as skipped.
    """
    out = Findings()
    manifest = Manifest(reader.manifest)
    fingerprint = manifest.fingerprint
    if cfg is not None:
        encoder = reencode_check(reader, cfg, out, max_rows=max_rows, seed=seed, encoder=encoder)
        tokenizer = tokenizer if tokenizer is not None else encoder.tokenizer
    if (msg := tokenizer_problem(tokenizer, fingerprint)) is not None:
        out.add("tokenizer", msg)
    cells = Cells(manifest.layout or None)
    encoding = manifest.encoding
    allowed = end_of_turn_ids(tokenizer, encoding, encoder)
    forbidden = forbidden_targets(tokenizer, encoding.get("placeholder_ids"), allowed)
    shift = ShiftCounter()
    n_samples = n_targets = 0
    for sample in _read_all(reader, out):
        n_samples += 1
        n_targets += sample.num_targets
        check_sample(sample, reader.top_k, reader.vocab_size, cells, forbidden, out)
        shift.add(sample)
    if (msg := shift.problem()) is not None:
        out.add("off-by-one", msg)
    counts = manifest.counts
    for key, found in (("cached", n_samples), ("targets", n_targets)):
        if counts.get(key) is not None and counts[key] != found:
            out.add("manifest", f"counts.{key} is {counts[key]} but the shards hold {found}")
    for msg in count_problems(reader.manifest):
        out.add("manifest", msg)
    if dataset is None and cfg is not None and reader.root.name in ("train", "val"):
        from pipeline.splits import split_file

        dataset = split_file(cfg, reader.root.name)
    if dataset is not None:
        custom = getattr(cfg, "custom", None)  # cfg may be any object with model/data fields
        need_response = getattr(custom, "written_responses", "off") == "off"
        partial = bool(getattr(custom, "allow_partial_cache", False))
        if (msg := coverage_problem(reader, dataset, need_response, partial)) is not None:
            out.add("coverage", msg)
    return out.lines()


def count_problems(manifest: dict[str, Any]) -> list[str]:
    """Every count of the manifest that does not reconcile with its skip records or ``rows_in``."""
    record = Manifest(manifest)
    counts, records = record.counts, record.skipped
    found: list[str] = []
    if counts.get("skipped") is not None and counts["skipped"] != len(records):
        found.append(f"counts.skipped is {counts['skipped']} but {len(records)} skip records are listed")
    by_reason: dict[str, int] = {}
    for rec in records:
        by_reason[str(rec.get("reason"))] = by_reason.get(str(rec.get("reason")), 0) + 1
    recorded = counts.get("skipped_by_reason")
    if recorded is not None and dict(sorted(recorded.items())) != dict(sorted(by_reason.items())):
        found.append(f"counts.skipped_by_reason is {recorded} but the skip records give {by_reason}")
    rows_in, cached = counts.get("rows_in"), counts.get("cached")
    if rows_in is not None and cached is not None and rows_in != cached + len(records):
        found.append(
            f"counts.rows_in is {rows_in} but {cached} cached + {len(records)} skipped rows are listed"
        )
    return found


def coverage_problem(
    reader: Any, dataset: str, need_response: bool = True, allow_partial: bool = False
) -> str | None:
    """What training would refuse about ``reader`` against the rows of ``dataset`` (None: covered).

    The same check as training's (:func:`pipeline.train.coverage.bind_to_cache`), so a cache the
    audit passes with a dataset is one training accepts."""
    from pipeline.train.coverage import bind_to_cache, load_split

    try:
        split = load_split(reader.root.name, [dataset], need_response=need_response)
        bound = bind_to_cache(split, reader, allow_partial=allow_partial)
    except DistillError as exc:
        return str(exc)
    return (
        None
        if len(bound.rows) + len(bound.excluded) == split.rows_in
        else (
            f"{dataset}: {split.rows_in} rows, but {len(bound.rows)} cached + {len(bound.excluded)} left out"
        )
    )


def _read_all(reader: Any, out: Findings) -> Iterable[CachedSample]:
    """Every readable sample; an unreadable batch becomes a finding instead of ending the audit."""
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
    from pipeline.binding import as_cached
    from pipeline.cache.manifest import compare_fingerprints
    from pipeline.data import Row, read_rows
    from pipeline.encoding import RowEncoder, encoding_differences

    if encoder is None:
        encoder = RowEncoder.from_config(cfg)
    recorded = Manifest(reader.manifest).encoding
    if recorded:
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
            cached = reader.get(sid)
        except (DistillError, ValueError):
            continue  # reported as unreadable by the sample pass
        try:
            enc = encoder.encode(as_cached(row, cached))
        except DistillError as exc:
            out.add("re-encode", f"sample {sid!r}: cached, but no longer encodes: {exc}")
            continue
        if found := encoding_differences(enc, cached):
            out.add("re-encode", f"sample {sid!r}: {'; '.join(found)}")
    return encoder
