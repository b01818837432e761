"""``manifest.json``: reading and writing it, shard and skip-log records, and comparing fingerprints.

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

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.cache.format import (
    FINGERPRINT_KEY,
    FORMAT_NAME,
    FORMAT_VERSION,
    PARTS_DIR,
    RECORD_KEYS,
    SHARD_RE,
    SKIP_WRITTEN_UNFINISHED,
    TAG_RETOKENIZED,
    TAG_UNFINISHED_KEPT,
    TAG_WRITTEN,
    Layout,
    check_format_version,
)
from pipeline.errors import CacheFormatError, CacheMismatchError
from pipeline.hashing import file_sha256

_DIGEST_MOD = 2**256


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CacheFormatError(f"{path}: unreadable ({err})") from err


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


def row_digests(batch: pa.RecordBatch) -> list[int]:
    """sha256 of each row's logical values (column name, then length-prefixed bytes), as integers.

    Hashing values rather than Arrow buffers keeps the digest independent of batching and of pyarrow.
    """
    per_column = [(name.encode(), _row_bytes(batch.column(i))) for i, name in enumerate(batch.schema.names)]
    out = []
    for r in range(batch.num_rows):
        h = hashlib.sha256()
        for name, rows in per_column:
            value = rows(r)
            h.update(name + b"\0" + len(value).to_bytes(8, "little") + value)
        out.append(int.from_bytes(h.digest(), "big"))
    return out


def _row_bytes(arr: pa.Array) -> Any:
    import numpy as np

    t = arr.type
    if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_list(t):
        offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset : arr.offset + len(arr) + 1]
        if pa.types.is_list(t):
            child = arr.values
            width = child.type.bit_width // 8
            data = memoryview(child.buffers()[1] or b"")[child.offset * width :]
        else:
            width = 1
            data = memoryview(arr.buffers()[2] or b"")
        return lambda r: bytes(data[offsets[r] * width : offsets[r + 1] * width])
    values = arr.to_numpy(zero_copy_only=False).astype("<i8")
    return lambda r: values[r].tobytes()


def digest_hex(total: int) -> str:
    return f"{total % _DIGEST_MOD:064x}"


def live_digest(shards: list[dict[str, Any]], superseded: list[dict[str, Any]], open_source: Any) -> str:
    """``content_digest`` of a cache: every shard record's ``digest`` summed, less the digests of the
    superseded rows, each read from its shard (``open_source(file name)``: an Arrow readable source)."""
    total = sum(int(s["digest"], 16) for s in shards)
    gone: dict[str, set[str]] = {}
    for r in superseded:
        gone.setdefault(str(r["shard"]), set()).add(str(r["sample_id"]))
    for name, ids in sorted(gone.items()):
        reader = pa.ipc.open_file(open_source(name), options=pa.ipc.IpcReadOptions(use_threads=False))
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            sids = batch.column("sample_id").to_pylist()
            if ids.isdisjoint(sids):
                continue
            total -= sum(d for sid, d in zip(sids, row_digests(batch), strict=True) if sid in ids)
    return digest_hex(total)


def read_shard_index(path: Path) -> tuple[pa.Schema, list[str]]:
    """Schema and sample_ids of a complete shard (reads only the sample_id column)."""
    try:
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_file(
                source, options=pa.ipc.IpcReadOptions(included_fields=[0], use_threads=False)
            )
            ids: list[str] = []
            for i in range(reader.num_record_batches):
                ids.extend(reader.get_batch(i).column(0).to_pylist())
            return reader.schema, ids
    except (OSError, pa.ArrowException) as err:
        raise CacheFormatError(f"shard {path.name}: unreadable Arrow IPC file ({err})") from err


def scan_shard(path: Path) -> dict[str, Any]:
    """Shard record (rows, targets, bytes, sha256, digest) computed from the file itself."""
    try:
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_file(source, options=pa.ipc.IpcReadOptions(use_threads=False))
            rows = targets = total = 0
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                rows += batch.num_rows
                targets += int(batch.column("num_targets").to_numpy().sum())
                total += sum(row_digests(batch))
    except (OSError, pa.ArrowException, KeyError) as err:
        raise CacheFormatError(f"shard {path.name}: unreadable Arrow IPC file ({err})") from err
    return {
        "file": path.name,
        "rows": rows,
        "targets": targets,
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "digest": digest_hex(total),
    }


def shard_meta(schema: pa.Schema, where: str) -> tuple[Layout, dict[str, Any]]:
    """Layout and fingerprint stored in a shard's schema metadata."""
    layout = Layout.from_schema(schema, where)
    raw = (schema.metadata or {}).get(FINGERPRINT_KEY)
    try:
        fingerprint = json.loads(raw) if raw is not None else None
    except ValueError:
        fingerprint = None
    if not isinstance(fingerprint, dict):
        raise CacheFormatError(f"{where}: missing or corrupt fingerprint metadata")
    return layout, fingerprint


def part_path(root: Path, rank: int) -> Path:
    return root / PARTS_DIR / f"rank-{rank:02d}.json"


def skips_path(root: Path, rank: int) -> Path:
    return root / PARTS_DIR / f"rank-{rank:02d}.skips.jsonl"


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


def complete_shards(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if SHARD_RE.match(p.name))


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
