"""Merging every writer rank's part into ``manifest.json``, one generation at a time.

The merge is a pure function of the directory: the parts, the complete shards, the skip logs and the
superseded records (:mod:`pipeline.cache.live`). It runs once every writer of a generation has
finished (under torchrun: rank 0 after a barrier; a single process in ``CacheWriter.finalize``), and
running it again gives the same manifest.

Counts reconcile per generation and in total:

- per generation ``g``: ``rows_in = reused + new + changed + skipped``, where ``new + changed`` are
  the rows ``g`` stored (``changed``: those whose earlier version ``g`` superseded) and ``reused`` the
  rows of ``g``'s dataset that earlier generations hold unchanged (the cache stage counts them);
- in total: ``stored_rows = cached + superseded`` (``storage``), and ``cached`` is the live rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.cache.cachedir import SplitDir, read_json
from pipeline.cache.format import FORMAT_VERSION, MANIFEST_NAME, PARTS_DIR, Layout
from pipeline.cache.live import LiveState, scan
from pipeline.cache.manifest import check_compatible, header, shard_tag_counts, write_json_atomic
from pipeline.cache.shards import live_digest, scan_shard, shard_meta
from pipeline.errors import CacheFormatError


def merge_rank_manifests(root: str | Path, rows_in: int | None = None) -> dict[str, Any]:
    """Merge every rank's part into ``manifest.json``; return its live ``counts`` (the merged
    generation's own counts are the manifest's last ``generations`` entry).

    Shards on disk that no part lists (a writer stopped between renaming a shard and recording it) are
    adopted from the file. ``rows_in`` defaults to the sum that the ranks of the generation recorded.

    Raises:
        CacheFormatError: no parts, a listed shard is missing, a sample is live twice or both live and
            skipped, or a generation's counts do not reconcile (then no manifest is written).
        CacheMismatchError: parts or shards written for different fingerprints or layouts.
    """
    root = Path(root)
    parts = _read_parts(root)
    first = parts[min(parts)]
    generation = max(int(p.get("generation", 0)) for p in parts.values())
    fingerprint, layout = first["fingerprint"], Layout.from_dict(first["layout"], str(root))
    shards = _shard_records(root, parts, fingerprint, layout)
    state = scan(root, generation)
    for rec in shards:
        rec["generation"] = state.shard_generation[rec["file"]]
    entry = _generation_entry(root, parts, state, generation, rows_in)
    previous = read_json(root / MANIFEST_NAME) if (root / MANIFEST_NAME).is_file() else None
    counts = _live_counts(state, shards, entry)
    manifest = (
        header(fingerprint, layout)
        | first.get("extra_meta", {})
        | {
            "counts": counts,
            "content_digest": _live_digest(root, state, shards),
            "skipped": [_skip_record(state.skips[s]) for s in sorted(state.skips)],
            "superseded": state.superseded,
            "storage": {"stored_rows": len(state.stored), "superseded": len(state.superseded)},
            "generations": [*_earlier_generations(previous, generation), entry],
            "shards": shards,
        }
    )
    write_json_atomic(root / MANIFEST_NAME, manifest)
    # Every writer has finished: leftovers are dead (shards, and JSON of a write killed half-way).
    for stale in [
        *root.glob("shard-*.arrow.tmp*"),
        *root.glob(".*.json.tmp-*"),
        *root.glob(f"{PARTS_DIR}/.*.tmp-*"),
    ]:
        stale.unlink(missing_ok=True)
    return counts


def _read_parts(root: Path) -> dict[int, dict[str, Any]]:
    parts = {int(p.stem.split("-")[1]): read_json(p) for p in sorted((root / PARTS_DIR).glob("rank-*.json"))}
    if not parts:
        raise CacheFormatError(f"{root}: no writer parts under {PARTS_DIR}/ (was anything written?)")
    return parts


def _shard_records(
    root: Path, parts: dict[int, dict[str, Any]], fingerprint: dict[str, Any], layout: Layout
) -> list[dict[str, Any]]:
    """One record per complete shard (the part's, or scanned from the file when none or stale), each
    shard's own fingerprint and layout checked against the parts'."""
    listed: dict[str, dict[str, Any]] = {}
    for rank, part in parts.items():
        check_compatible(str(SplitDir(root).part_path(rank)), part, fingerprint, layout)
        listed.update({s["file"]: s for s in part["shards"]})
    on_disk = {p.name: p for p in SplitDir(root).shard_paths()}
    if missing := sorted(set(listed) - set(on_disk)):
        raise CacheFormatError(f"{root}: shards recorded but missing on disk: {missing}")
    shards = []
    for name, path in sorted(on_disk.items()):
        with pa.memory_map(str(path)) as source:
            schema = _schema(path, source)
        shard_layout, shard_fp = shard_meta(schema, f"shard {name}")
        found = {"format_version": FORMAT_VERSION, "fingerprint": shard_fp, "layout": shard_layout.to_dict()}
        check_compatible(f"shard {name}", found, fingerprint, layout)
        rec = listed.get(name)
        shards.append(dict(rec) if rec and rec["bytes"] == path.stat().st_size else scan_shard(path))
    return shards


def _schema(path: Path, source: Any) -> pa.Schema:
    try:
        return pa.ipc.open_file(source).schema
    except (OSError, pa.ArrowException) as err:
        raise CacheFormatError(f"shard {path.name}: unreadable Arrow IPC file ({err})") from err


def _generation_entry(
    root: Path, parts: dict[int, dict[str, Any]], state: LiveState, g: int, rows_in: int | None
) -> dict[str, Any]:
    """The record of generation ``g``; raises when its rows do not reconcile."""
    changed_ids = {r["sample_id"] for r in state.superseded if r.get("generation") == g}
    within = {(r["sample_id"], r["shard"]) for r in state.superseded if r.get("generation") == g}
    # Rows ``g`` stored and kept (a row re-cached twice within ``g``, its dataset edited between a
    # kill and the resume, counts once).
    stored = [
        r
        for r in state.stored
        if state.shard_generation[r.shard] == g and (r.sample_id, r.shard) not in within
    ]
    changed = sum(1 for r in stored if r.sample_id in changed_ids)
    skipped = sum(1 for rec in state.skips.values() if rec["generation"] == g)
    mine = {r: p for r, p in parts.items() if int(p.get("generation", 0)) == g}
    world = int(mine[min(mine)].get("world_size", 1))  # the latest launch's: rank 0 always writes
    latest = [p for r, p in mine.items() if r < world and p.get("world_size") == world]
    complete = len(latest) == world

    def total(key: str) -> int | None:
        values = [p.get(key) for p in latest]
        return sum(int(v) for v in values if v is not None) if complete and None not in values else None

    rows_in = total("rows_in") if rows_in is None else rows_in
    reused = total("reused")
    if reused is None and g == 0:
        reused = 0  # nothing to reuse in a new cache
    entry = {
        "generation": g,
        "rows_in": rows_in,
        "reused": reused,
        "new": len(stored) - changed,
        "changed": changed,
        "skipped": skipped,
        "superseded": sum(1 for r in state.superseded if r.get("generation") == g),
        "dataset": parts[min(parts)].get("dataset"),
    }
    if rows_in is not None and reused is not None and rows_in != reused + len(stored) + skipped:
        raise CacheFormatError(
            f"{root}: generation {g}: rows in ({rows_in}) != reused ({reused}) + cached ({len(stored)}) + "
            f"skipped ({skipped}): {rows_in - reused - len(stored) - skipped} rows were neither cached "
            "nor skipped"
        )
    return entry


def _live_counts(state: LiveState, shards: list[dict[str, Any]], entry: dict[str, Any]) -> dict[str, Any]:
    by_reason: dict[str, int] = {}
    for rec in state.skips.values():
        by_reason[rec["reason"]] = by_reason.get(rec["reason"], 0) + 1
    return {
        "rows_in": entry["rows_in"],
        "cached": len(state.rows),
        "skipped": len(state.skips),
        "skipped_by_reason": dict(sorted(by_reason.items())),
        "targets": sum(r.num_targets for r in state.rows.values()),
    } | shard_tag_counts(shards)


def _live_digest(root: Path, state: LiveState, shards: list[dict[str, Any]]) -> str:
    """Sum of the live rows' digests: every shard's, less those of its superseded rows."""
    return live_digest(shards, state.superseded, lambda name: pa.memory_map(str(root / name)))


def _skip_record(rec: dict[str, Any]) -> dict[str, Any]:
    # Which generation skipped a row is history (the skip logs keep it); its digest lets compaction
    # carry the skip over.
    return {k: rec[k] for k in ("sample_id", "reason", "detail", "row_digest")}


def _earlier_generations(previous: dict[str, Any] | None, g: int) -> list[dict[str, Any]]:
    """Records of the generations before ``g``; a manifest from before generations counts as one."""
    if previous is None or g == 0:
        return []
    if "generations" in previous:
        return [e for e in previous["generations"] if e["generation"] < g]
    c = previous.get("counts") or {}
    dataset = (previous.get("fingerprint") or {}).get("dataset_sha256")
    return [
        {
            "generation": 0,
            "rows_in": c.get("rows_in"),
            "reused": 0,
            "new": c.get("cached"),
            "changed": 0,
            "skipped": c.get("skipped"),
            "superseded": 0,
            "dataset": {"sha256": dataset} if dataset else None,
        }
    ]
