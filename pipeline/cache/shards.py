"""Shard files read for what the manifest records about them: their index (sample ids), schema
metadata (layout, fingerprint), per-row digests and the cache's order-free ``content_digest``.

A row's digest is the sha256 of its stored columns; the content digest is the sum of the live rows'
digests modulo 2**256, so the same rows give the same digest however they were split into shards,
ranks or generations (:func:`live_digest`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.cache.format import FINGERPRINT_KEY, Layout
from pipeline.errors import CacheFormatError
from pipeline.hashing import file_sha256

__all__ = ["digest_hex", "live_digest", "read_shard_index", "row_digests", "scan_shard", "shard_meta"]

_DIGEST_MOD = 2**256


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
