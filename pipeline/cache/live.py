"""Which stored rows are live: generations, superseded versions and skips of an incremental cache.

A cache grows in *generations*: each finished ``distill cache`` run on a split is one, whatever its
dataset. A generation appends shards for the rows the cache did not hold with their current content
and records, in ``parts/rank-RR.superseded.jsonl``, every stored row whose dataset row changed (a new
version follows) or became unusable (a skip follows). A stored row is *live* unless such a record
names it (its ``sample_id`` and shard); at most one row per ``sample_id`` is live. A skip record is
live while no later generation cached its ``sample_id``.

Every record is appended and fsynced before the row it makes room for is written, so a kill between
the two leaves the sample neither live nor skipped, and the resumed run simply caches it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.cache.cachedir import SplitDir, read_json
from pipeline.cache.format import MANIFEST_NAME
from pipeline.cache.manifest import read_skips
from pipeline.errors import CacheFormatError

# Columns a stage reads to decide which rows to reuse; ``row_digest`` is absent in older shards.
INDEX_COLUMNS = ("sample_id", "encoding_hash", "num_targets", "row_digest")


@dataclass(frozen=True)
class StoredRow:
    """One row of a shard, as the index columns describe it (``row_digest`` "" when unknown)."""

    sample_id: str
    shard: str
    encoding_hash: str
    num_targets: int
    row_digest: str


def read_superseded_log(path: Path) -> list[dict[str, Any]]:
    """The records of one rank's superseded log; a torn last line (interrupted append) is ignored."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("sample_id"), str) and rec.get("shard"):
            out.append(rec)
    return out


def read_superseded(root: Path) -> list[dict[str, Any]]:
    """Every rank's superseded records, ``(sample_id, shard)`` unique, sorted."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in SplitDir(root).superseded_logs():
        for rec in read_superseded_log(path):
            out.setdefault((rec["sample_id"], str(rec["shard"])), rec)
    return [out[k] for k in sorted(out)]


def append_record(f: Any, rec: dict[str, Any]) -> None:
    """Append one JSON line to an open log and make it durable before returning."""
    f.write(json.dumps(rec, sort_keys=True) + "\n")
    f.flush()
    os.fsync(f.fileno())


def read_shard_rows(path: Path) -> tuple[pa.Schema, list[StoredRow]]:
    """Schema and index rows of a complete shard (decompresses only the index columns)."""
    try:
        with pa.memory_map(str(path)) as source:
            schema = pa.ipc.open_file(source).schema
            wanted = [schema.get_field_index(c) for c in INDEX_COLUMNS if c in schema.names]
            options = pa.ipc.IpcReadOptions(included_fields=wanted, use_threads=False)
            table = pa.ipc.open_file(source, options=options).read_all()
    except (OSError, pa.ArrowException) as err:
        raise CacheFormatError(f"shard {path.name}: unreadable Arrow IPC file ({err})") from err
    cols = {c: table.column(c).to_pylist() for c in table.column_names}
    digests = cols.get("row_digest") or [""] * table.num_rows
    rows = [
        StoredRow(sid, path.name, h, int(n), d)
        for sid, h, n, d in zip(
            cols["sample_id"], cols["encoding_hash"], cols["num_targets"], digests, strict=True
        )
    ]
    return schema, rows


def generation_of(manifest: dict[str, Any] | None) -> int:
    """The generation a writer opening now writes: one past the last finished one (0 for a new cache;
    a cache written before generations were recorded holds one)."""
    if manifest is None:
        return 0
    return len(manifest.get("generations") or [None])


@dataclass
class LiveState:
    """What a cache directory holds now, finished generations and work in progress alike."""

    generation: int  # the generation being written (unlisted shards belong to it)
    shard_generation: dict[str, int]
    stored: list[StoredRow]
    rows: dict[str, StoredRow]  # live rows by sample_id
    superseded: list[dict[str, Any]]
    skips: dict[str, dict[str, Any]]  # live skip record per sample_id (with its "generation")
    schemas: dict[str, pa.Schema] = field(default_factory=dict)

    def row_generation(self, sample_id: str) -> int:
        return self.shard_generation[self.rows[sample_id].shard]


def scan(root: Path, generation: int | None = None) -> LiveState:
    """Read every complete shard's index, the superseded records and the skip logs of ``root``.

    ``generation`` is the one being written (default: one past the manifest's). Raises
    ``CacheFormatError`` when two live rows share a ``sample_id``, a superseded record names no stored
    row, or a sample is live and skipped in the same or a later generation than its row.
    """
    manifest = read_json(root / MANIFEST_NAME) if (root / MANIFEST_NAME).is_file() else None
    current = generation_of(manifest) if generation is None else generation
    listed = {s["file"]: int(s.get("generation", 0)) for s in (manifest or {}).get("shards", [])}
    state = LiveState(current, {}, [], {}, read_superseded(root), {})
    for path in SplitDir(root).shard_paths():
        schema, rows = read_shard_rows(path)
        state.schemas[path.name] = schema
        state.shard_generation[path.name] = listed.get(path.name, current)
        state.stored.extend(rows)
    gone = {(r["sample_id"], r["shard"]) for r in state.superseded}
    found = {(r.sample_id, r.shard) for r in state.stored}
    if dangling := sorted(gone - found):
        raise CacheFormatError(f"{root}: superseded records name rows no shard holds, e.g. {dangling[0]}")
    for row in state.stored:
        if (row.sample_id, row.shard) in gone:
            continue
        if row.sample_id in state.rows:
            first = state.rows[row.sample_id].shard
            raise CacheFormatError(f"{root}: sample {row.sample_id!r} cached twice ({first} and {row.shard})")
        state.rows[row.sample_id] = row
    for path in SplitDir(root).skip_logs():
        for rec in read_skips(path):
            prev = state.skips.get(rec["sample_id"])
            if prev is None or int(rec["generation"]) >= int(prev["generation"]):
                state.skips[rec["sample_id"]] = rec
    for sid in [s for s in state.skips if s in state.rows]:
        rec, row_gen = state.skips[sid], state.row_generation(sid)
        if int(rec["generation"]) >= row_gen:
            raise CacheFormatError(
                f"{root}: sample {sid!r} is both cached ({state.rows[sid].shard}) and skipped ({rec['reason']})"
            )
        del state.skips[sid]  # skipped once, cached by a later generation
    return state
