"""Which dataset rows a training run uses, and why every other row is left out.

Before the model loads, :func:`load_split` reads each split and checks every row (parsed, images
readable, response present): a typo in a path, an empty split or (with ``custom.strict``) one bad
row stops the run before any optimizer step, naming the file. For the cached variant,
:func:`bind_to_cache` then requires the cache to *cover* the split: every row is either cached or
recorded by the cache stage as skipped with its reason. Rows that are neither (a cache built with
``--limit``, or a split whose caching never finished) are refused unless ``custom.allow_partial_cache``
is set. A skip record is trusted only while it still describes the row: a row recorded as skipped
that has changed since (its digest differs from the record's, or the row check that skipped it
passes now) is refused as stale, since ``distill cache`` re-attempts it. :func:`check_rows_against_cache`
then compares every row the run will use with its cache row, all of them before the first optimizer
step (a stale row found by a batch at step 12 would waste the steps before it).
:func:`check_left_out` caps the unusable fraction (``custom.max_skipped_fraction``), and
:func:`write_report` prints the counts when training starts and records every left-out row with its
reason in ``<output_dir>/data_coverage.json``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.binding import as_cached, require_cached_encoding
from pipeline.cache.cachedir import Manifest
from pipeline.data import (
    BAD_ROW,
    EMPTY_RESPONSE,
    MISSING_IMAGE,
    NON_UTF8,
    PROMPT_ONLY,
    REMOTE_IMAGE,
    UNREADABLE_IMAGE,
    BadRow,
    Row,
    count_reasons,
    legacy_id_hint,
    partition_rows,
    read_split_rows,
    require_rows,
)
from pipeline.encoding import row_digest
from pipeline.errors import CacheMismatchError, DataError
from pipeline.files import atomic_write

logger = logging.getLogger(__name__)

log = logging.getLogger(__name__)

REPORT_NAME = "data_coverage.json"
NOT_CACHED = "not_cached"  # left out because a partial cache (allow_partial_cache) does not hold it
# Reasons the row check (``pipeline.data.check_row``) gives: the cache stage records such a skip
# without a row digest, so a row that passes the check now has changed since it was skipped.
ROW_CHECK_REASONS = frozenset(
    {BAD_ROW, NON_UTF8, MISSING_IMAGE, UNREADABLE_IMAGE, REMOTE_IMAGE, PROMPT_ONLY, EMPTY_RESPONSE}
)


@dataclass
class SplitRows:
    """A split as a run uses it: ``rows`` trained (or evaluated) on, ``excluded`` left out with reasons.

    ``rows_in`` = len(rows) + len(excluded), always; ``cache``: the cache directory bound, if any.
    """

    name: str
    files: list[str]
    rows: list[Row]
    excluded: list[BadRow]
    cache: str | None = None
    unused_cache_rows: int = 0  # rows the bound cache holds for sample_ids this split does not have

    @property
    def rows_in(self) -> int:
        return len(self.rows) + len(self.excluded)

    @property
    def where(self) -> str:
        return ", ".join(self.files)

    def summary(self) -> dict[str, Any]:
        """JSON record: counts, reasons and every excluded row (sample_id, reason, detail, source)."""
        return {
            "files": self.files,
            "cache": self.cache,
            "rows_in": self.rows_in,
            "rows_used": len(self.rows),
            "excluded": len(self.excluded),
            "excluded_by_reason": count_reasons(self.excluded),
            "unused_cache_rows": self.unused_cache_rows,
            "excluded_rows": [
                {"sample_id": r.sample_id, "reason": r.reason, "detail": r.detail, "source": r.source}
                for r in self.excluded
            ],
        }


def load_split(
    name: str, files: Sequence[str], *, strict: bool = False, need_response: bool = True
) -> SplitRows:
    """Read and check every row of ``files`` (images opened); ``DataError`` naming the file(s) when no
    row is usable, or with ``strict`` at the first unusable row. ``need_response=False`` keeps rows
    without an assistant response (the teacher cache holds a response written for them)."""
    rows, excluded = partition_rows(read_split_rows(files), need_response=need_response, strict=strict)
    split = SplitRows(name, [str(f) for f in files], rows, excluded)
    require_rows(split.where, len(rows), excluded, f"usable rows for the {name} split")
    return split


def bind_to_cache(split: SplitRows, cache: Any, *, allow_partial: bool = False) -> SplitRows:
    """The rows ``cache`` holds, in cache order; the rest of the split excluded with the reason the
    cache stage recorded (or the check's own, or ``not_cached`` under ``allow_partial``).

    Cache rows the split does not have (a subset, another file of the same cache) are counted in
    ``unused_cache_rows``, never an error. Raises ``CacheMismatchError`` when rows are neither cached
    nor recorded as skipped, or a skip record is stale (:func:`stale_skip`), and ``allow_partial`` is
    off; with it such rows are left out as ``not_cached``.
    """
    everything: list[Row | BadRow] = [*split.rows, *split.excluded]
    order = sorted(everything, key=_file_order)
    known = {r.sample_id for r in order}
    cached = [sid for sid in cache.sample_ids if sid in known]
    cached_set = set(cached)
    skipped = cache.skipped()
    # CacheReader.skipped() leaves the digest out; the manifest's view has it
    digests = Manifest(getattr(cache, "manifest", None) or {}).skip_digests()
    by_id = {r.sample_id: r for r in split.rows}
    unused = len(cache.sample_ids) - len(cached)
    unusable_now = [r for r in split.excluded if r.sample_id in cached_set]
    if unusable_now:
        r = unusable_now[0]
        raise DataError(
            f"{r.source}: sample {r.sample_id!r} is cached but unusable now: {r.reason}: {r.detail}; "
            "run `distill cache` to record it as skipped"
        )
    uncovered = [r for r in order if r.sample_id not in cached_set and r.sample_id not in skipped]
    if uncovered and not allow_partial:
        raise CacheMismatchError(
            f"{cache.root}: the cache covers {split.rows_in - len(uncovered)} of the {split.rows_in} rows "
            f"of {split.where}: {len(uncovered)} rows are neither cached nor recorded as skipped (e.g. "
            f"{uncovered[0].sample_id!r} at {uncovered[0].source}); they are new to the cache, it was "
            "built with --limit, or its caching did not finish. Run `distill cache` to cache just "
            "those rows, or set custom.allow_partial_cache: true to train on the cached rows only"
            + (legacy_id_hint(list(cache.sample_ids)[:20]) if not cached else "")
        )
    excluded: list[BadRow] = []
    for row in order:
        if row.sample_id in cached_set:
            continue
        if row.sample_id in skipped:
            rec = skipped[row.sample_id]
            stale = stale_skip(row, rec, digests.get(row.sample_id, ""), cache.root)
            if stale is None:
                excluded.append(BadRow(row.sample_id, rec["reason"], rec["detail"], row.source))
            elif not allow_partial:
                raise CacheMismatchError(
                    stale + " (or set custom.allow_partial_cache: true to train without it)"
                )
            else:
                excluded.append(BadRow(row.sample_id, NOT_CACHED, stale, row.source))
        elif isinstance(row, BadRow):
            excluded.append(row)
        else:
            detail = "not in the partial cache (custom.allow_partial_cache)"
            excluded.append(BadRow(row.sample_id, NOT_CACHED, detail, row.source))
    return SplitRows(
        split.name, split.files, [by_id[sid] for sid in cached], excluded, str(cache.root), unused
    )


def stale_skip(row: Row | BadRow, rec: dict[str, str], recorded_digest: str, root: Any) -> str | None:
    """Why the cache's skip record ``rec`` no longer describes ``row`` (one line), or None if it does.

    A record with a digest is stale when the row's digest differs (the row was fixed, or the record
    edited); one without (the row check skipped the row) when that check passes now. A row that is
    unusable now stays left out under the record, whatever its digest.
    """
    if not isinstance(row, Row):
        return None
    where = f"{row.source}: sample {row.sample_id!r}: the skip record of the cache at {root}"
    why = f"({rec['reason']}: {rec['detail']})"
    if recorded_digest:
        now = row_digest(row)
        if now == recorded_digest:
            return None
        change = (
            f"was made for another version of the row (row digest {recorded_digest[:12]}, "
            f"the row now {now[:12]}): the row changed since it was skipped, or the record was edited"
        )
    elif rec["reason"] in ROW_CHECK_REASONS:
        change = "no longer holds: the row passes that check now"
    else:
        return None  # an encoding failure recorded without a digest: nothing to compare it with
    return f"{where} {why} {change}; run `distill cache` to re-attempt the row"


def check_rows_against_cache(split: SplitRows, cache: Any, encoder: Any) -> None:
    """Every row ``split`` uses (bound by :func:`bind_to_cache`) is what its cache row was built from;
    else ``CacheMismatchError`` naming file:line, sample and the first difference, before any step.

    A row whose digest (messages and image bytes) equals its cache row's is unchanged without
    encoding: the fingerprint checked when the cache opened covers every encoding setting. Any other
    row (changed, or cached before digests were stored) is encoded and its encoding hash compared.
    Rows are read in cache order, so each record batch is decompressed once.
    """
    encoded = 0
    for row in split.rows:
        cached = cache.get(row.sample_id)
        if cached.row_digest and cached.row_digest == row_digest(row):
            continue
        require_cached_encoding(row, encoder.encode(as_cached(row, cached)), cached)
        encoded += 1
    logger.info(
        "%s split: %d rows checked against the cache at %s (%d encoded to compare)",
        split.name,
        len(split.rows),
        cache.root,
        encoded,
    )


def _file_order(r: Row | BadRow) -> tuple[str, int]:
    """Sort key: file, then line (``source`` is ``"path:line"``)."""
    path, _, line = r.source.rpartition(":")
    return (path, int(line)) if line.isdigit() else (r.source, 0)


def check_left_out(split: SplitRows, max_fraction: float, *, strict: bool = False) -> None:
    """Refuse a split whose unusable rows exceed ``max_fraction`` of its rows (``DataError``); with
    ``strict``, refuse any unusable row. Rows left out only by an opted-in partial cache do not count."""
    unusable = [r for r in split.excluded if r.reason != NOT_CACHED]
    if strict and unusable:
        raise DataError(f"{_where(unusable[0])} (custom.strict)")
    fraction = len(unusable) / max(split.rows_in, 1)
    if fraction > max_fraction:
        reasons = ", ".join(f"{k}: {v}" for k, v in count_reasons(unusable).items())
        raise DataError(
            f"{split.where}: {len(unusable)} of {split.rows_in} rows ({fraction:.1%}) of the {split.name} "
            f"split are unusable ({reasons}), more than custom.max_skipped_fraction = {max_fraction:g}; "
            f"fix the rows (first: {_where(unusable[0])}) or raise the setting"
        )


def _where(r: BadRow) -> str:
    """``file:line: sample 'id': reason: detail`` (a cache skip record's detail may already name them)."""
    if r.detail.startswith(r.source):
        return f"{r.reason}: {r.detail}"
    return f"{r.source}: sample {r.sample_id!r}: {r.reason}: {r.detail}"


def write_report(splits: Sequence[SplitRows], output_dir: str | Path) -> Path:
    """Log one line per split and write ``<output_dir>/data_coverage.json`` (rank 0 only)."""
    path = Path(output_dir) / REPORT_NAME
    if int(os.environ.get("RANK", "0")) != 0:
        return path
    for s in splits:
        reasons = ", ".join(f"{k}: {v}" for k, v in count_reasons(s.excluded).items()) or "none"
        unused = f"; {s.unused_cache_rows} cache rows unused" if s.unused_cache_rows else ""
        log.info(
            "[train] %s split (%s): %d rows, using %d, left out %d (%s)%s",
            s.name, s.where, s.rows_in, len(s.rows), len(s.excluded), reasons, unused,
        )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        fh.write(json.dumps({s.name: s.summary() for s in splits}, indent=1, sort_keys=True) + "\n")
    return path
