"""Which dataset rows a training run uses, and why every other row is left out.

Before the model loads, :func:`load_split` reads each split and checks every row (parsed, images
readable, response present): a typo in a path, an empty split or (with ``custom.strict``) one bad
row stops the run before any optimizer step, naming the file. For the cached variant,
:func:`bind_to_cache` then requires the cache to *cover* the split: every row is either cached or
recorded by the cache stage as skipped with its reason. Rows that are neither (a cache built with
``--limit``, or a split whose caching never finished) are refused unless ``custom.allow_partial_cache``
is set. :func:`check_left_out` caps the unusable fraction (``custom.max_skipped_fraction``), and
:func:`write_report` prints the counts when training starts and records every left-out row with its
reason in ``<output_dir>/data_coverage.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.data import (
    BadRow,
    Row,
    count_reasons,
    legacy_id_hint,
    partition_rows,
    read_split_rows,
    require_rows,
)
from pipeline.errors import CacheMismatchError, DataError

REPORT_NAME = "data_coverage.json"
NOT_CACHED = "not_cached"  # left out because a partial cache (allow_partial_cache) does not hold it


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
    nor recorded as skipped and ``allow_partial`` is off.
    """
    everything: list[Row | BadRow] = [*split.rows, *split.excluded]
    order = sorted(everything, key=_file_order)
    known = {r.sample_id for r in order}
    cached = [sid for sid in cache.sample_ids if sid in known]
    cached_set = set(cached)
    skipped = cache.skipped()
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
            excluded.append(BadRow(row.sample_id, rec["reason"], rec["detail"], row.source))
        elif isinstance(row, BadRow):
            excluded.append(row)
        else:
            detail = "not in the partial cache (custom.allow_partial_cache)"
            excluded.append(BadRow(row.sample_id, NOT_CACHED, detail, row.source))
    return SplitRows(
        split.name, split.files, [by_id[sid] for sid in cached], excluded, str(cache.root), unused
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
    """Print one line per split and write ``<output_dir>/data_coverage.json`` (rank 0 only)."""
    path = Path(output_dir) / REPORT_NAME
    if int(os.environ.get("RANK", "0")) != 0:
        return path
    for s in splits:
        reasons = ", ".join(f"{k}: {v}" for k, v in count_reasons(s.excluded).items()) or "none"
        unused = f"; {s.unused_cache_rows} cache rows unused" if s.unused_cache_rows else ""
        print(
            f"[train] {s.name} split ({s.where}): {s.rows_in} rows, using {len(s.rows)}, "
            f"left out {len(s.excluded)} ({reasons}){unused}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({s.name: s.summary() for s in splits}, indent=1, sort_keys=True) + "\n")
    return path
