"""``manifest.json`` as a record: writing it, skip-log records, comparing fingerprints, and counts.

Scanning shard files and their digests is :mod:`pipeline.cache.shards`; where each file lives is
:mod:`pipeline.cache.cachedir`.

A cache directory holds complete shards (``shard-rRR-IIIII.arrow``), ``parts/rank-RR.json`` (one partial
manifest per writer rank: fingerprint, layout, its shards), ``parts/rank-RR.skips.jsonl`` (its durable
skip log), ``parts/rank-RR.superseded.jsonl`` (stored rows no longer live, :mod:`pipeline.cache.live`)
and, once every writer has finished, ``manifest.json``, made by
:func:`pipeline.cache.merge.merge_rank_manifests`.

What two manifests are compared on (:func:`manifest_content`) is everything but their history (shards,
generations, superseded rows): the same set of live sample_ids with identical row data gives the same
``content_digest`` however the rows were split into shards, ranks or generations, and nothing
run-dependent (no time, host or path) is recorded anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.cache.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    RECORD_KEYS,
    SKIP_WRITTEN_UNFINISHED,
    TAG_RETOKENIZED,
    TAG_UNFINISHED_KEPT,
    TAG_WRITTEN,
    Layout,
    check_format_version,
)
from pipeline.errors import CacheMismatchError
from pipeline.files import temporary_name


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file and a rename, so readers never see half a file. (Not
    ``pipeline.files.atomic_write``: a full disk here must reach the cache's own handler as the
    ``OSError`` it is, which says what the cache holds.)"""
    tmp = temporary_name(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves nothing behind
        raise


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; non-dict values (lists included) are leaves."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


_MISSING = "<missing>"


def compare_fingerprints(expected: dict[str, Any], found: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> ``(expected, found)`` for every leaf that differs (``"<missing>"`` when absent)."""
    a, b = flatten(expected), flatten(found)
    return {
        k: (a.get(k, _MISSING), b.get(k, _MISSING))
        for k in sorted(a.keys() | b.keys())
        if a.get(k, _MISSING) != b.get(k, _MISSING)
    }


def mismatch_error(where: str, differences: dict[str, tuple[Any, Any]]) -> CacheMismatchError:
    lines = "; ".join(f"{k}: expected {e!r}, cache has {f!r}" for k, (e, f) in differences.items())
    return CacheMismatchError(f"{where} was built for something else: {lines}", differences)


def read_skips(path: Path) -> list[dict[str, Any]]:
    """Skip records of one log; a torn last line (interrupted append) is ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("sample_id"), str):
            out.append(
                {
                    "sample_id": rec["sample_id"],
                    "reason": str(rec.get("reason", "")),
                    "detail": str(rec.get("detail", "")),
                    # Records from before generations belong to the first one; the digest of the
                    # dataset row lets a later generation keep the skip without redoing the row.
                    "generation": int(rec.get("generation", 0)),
                    "row_digest": str(rec.get("row_digest", "")),
                }
            )
    return out


# Manifest entries about how the content got there (which shards, which generations, which stored rows
# were superseded), not about the content itself.
HISTORY_KEYS = ("shards", "generations", "superseded", "storage")


def manifest_content(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of a manifest that must be equal for two caches to hold the same live content
    (an incremental cache and a fresh one of the same dataset compare equal)."""
    return {k: v for k, v in manifest.items() if k not in HISTORY_KEYS}


def settings_only(fingerprint: Any) -> Any:
    """A fingerprint without its record-only keys (``RECORD_KEYS``): what two caches must share."""
    if not isinstance(fingerprint, dict):
        return fingerprint
    return {k: v for k, v in fingerprint.items() if k not in RECORD_KEYS}


def header(fingerprint: dict[str, Any], layout: Layout) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "layout": layout.to_dict(),
    }


def check_compatible(where: str, found: dict[str, Any], fingerprint: dict[str, Any], layout: Layout) -> None:
    """Raise if a manifest or part at ``where`` was written for another fingerprint or layout."""
    check_format_version(found, where)
    diffs = compare_fingerprints(
        {"fingerprint": settings_only(fingerprint), "layout": layout.to_dict()},
        {"fingerprint": settings_only(found.get("fingerprint")), "layout": found.get("layout")},
    )
    if diffs:
        raise mismatch_error(where, diffs)


def shard_tag_counts(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"tags": {name: rows}}`` summed over shard records (empty when no row is tagged).

    A shard adopted from the file (renamed, not yet recorded, then found by a merge or a resumed
    writer) has no ``tags`` record: its rows are counted under ``tags_unknown_rows``.
    """
    tags: dict[str, int] = {}
    unknown = 0
    for rec in shards:
        if "tags" not in rec:
            unknown += int(rec.get("rows", 0))
        for name, n in rec.get("tags", {}).items():
            tags[name] = tags.get(name, 0) + int(n)
    if not tags:
        return {}
    return {"tags": dict(sorted(tags.items()))} | ({"tags_unknown_rows": unknown} if unknown else {})


def written_counts(counts: dict[str, Any]) -> dict[str, int]:
    """Teacher-written rows of a manifest's ``counts`` (all 0 for a cache without any).

    ``written``: cached teacher-written rows; ``retokenized``: of those, rows whose decode-then-encode
    changed the generated ids; ``unfinished_kept`` / ``unfinished_skipped``: responses that hit the
    token limit without stopping, kept or skipped; ``unknown_rows``: rows of shards without a tag record.
    """
    tags = counts.get("tags") or {}
    skipped = int((counts.get("skipped_by_reason") or {}).get(SKIP_WRITTEN_UNFINISHED, 0))
    return {
        "written": int(tags.get(TAG_WRITTEN, 0)),
        "retokenized": int(tags.get(TAG_RETOKENIZED, 0)),
        "unfinished_kept": int(tags.get(TAG_UNFINISHED_KEPT, 0)),
        "unfinished_skipped": skipped,
        "unknown_rows": int(counts.get("tags_unknown_rows", 0) or 0),
    }
