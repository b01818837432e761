"""Which rows of a split the cache stage must compute: the rest it reuses, row by row.

A row is reused when the cache holds its ``sample_id`` live with the same content: the same row digest
(:func:`pipeline.encoding.row_digest`, messages and image bytes), or, for a row stored before digests
existed, the same encoding hash (the row is then encoded, never forwarded). Every other row is new, or
changed (its stored version is superseded first), and is encoded and forwarded. A row skipped by an
earlier generation keeps its skip while its digest is unchanged, and is retried otherwise.

:func:`key_rows` decides from the plan and the cache's live state alone, before any forward, so
``distill cache --dry-run`` prints the same split the stage then computes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.cache.format import SUPERSEDED_CHANGED, SUPERSEDED_UNUSABLE
from pipeline.data import BadRow, Row
from pipeline.encoding import row_digest
from pipeline.errors import ConfigError, DataError
from pipeline.teacher.plan import SplitPlan

if TYPE_CHECKING:
    from pipeline.cache.cachedir import Manifest
    from pipeline.cache.live import LiveState
    from pipeline.cache.writer import CacheWriter
    from pipeline.config import DistillConfig
    from pipeline.encoding import RowEncoder


@dataclass
class KeyedRows:
    """One rank's share of a split against the cache: what this generation does with each row.

    ``todo``: rows to encode and forward (new, or changed); ``changed``: sample_ids among them whose
    stored version is superseded first; ``reused``: rows the cache holds unchanged from an earlier
    generation; ``done``: rows this generation already cached or skipped (a resumed run);
    ``unusable``: rows to skip now, with ``dropped`` the sample_ids whose stored row they supersede;
    ``kept``: earlier skips recorded again (same digest); ``retried``: earlier skips computed again.
    """

    todo: list[Row] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    reused: int = 0
    done: int = 0
    unusable: list[BadRow] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def new(self) -> int:
        return len(self.todo) - len(self.changed)

    def line(self, rows_in: int) -> str:
        """``N rows: A reused, B new, C changed (re-cached), D to skip`` (+ what a resume found done)."""
        to_skip = len(self.unusable) + len(self.kept)
        done = f", {self.done} already done by this run's earlier attempt" if self.done else ""
        return (
            f"{rows_in:,} rows: {self.reused:,} reused, {self.new:,} new, {len(self.changed):,} changed "
            f"(to re-cache), {to_skip:,} to skip{done}"
        )


def writer_digest(digest: str, key: str) -> str:
    """A student-written row's key: its row digest mixed with the writer's key
    (:func:`pipeline.fingerprint.writer_key`: checkpoint digests and round)."""
    return hashlib.sha256(f"{digest}:written-by:{key}".encode()).hexdigest()


def key_rows(
    plan: SplitPlan,
    state: LiveState,
    encode_hash: Callable[[Row], str | None],
    written: tuple[str, str | None] | None = None,
) -> KeyedRows:
    """Key ``plan``'s rows against ``state`` (:func:`pipeline.cache.live.scan`); reads no shard data.

    ``encode_hash(row)``: the row's encoding hash now (``None`` when it fails to encode), asked only
    for rows stored without a digest. ``written``: ``(custom.written_responses, writer key)`` when a
    student writes: the rows it writes are keyed by :func:`writer_digest`, so another writer or round
    makes them changed rows and the same one reuses them (the teacher's key is ``None``: plain digests).
    """
    from pipeline.teacher.written import wants_written

    known = plan.digests
    out = KeyedRows(digests={r.sample_id: known.get(r.sample_id) or row_digest(r) for r in plan.usable})
    mode, key = written or ("off", None)
    if key is not None:
        for r in plan.usable:
            if wants_written(r, mode):
                out.digests[r.sample_id] = writer_digest(out.digests[r.sample_id], key)
    for row in plan.usable:
        _key_usable(row, out.digests[row.sample_id], state, encode_hash, out)
    for bad in plan.unusable:
        sid = bad.sample_id
        if sid in state.rows:
            out.dropped.append(sid)
            out.unusable.append(bad)
        elif sid in state.skips and state.skips[sid]["generation"] == state.generation:
            out.done += 1
        else:
            if sid in state.skips:
                out.retried.append(sid)
            out.unusable.append(bad)
    return out


def _key_usable(
    row: Row, digest: str, state: LiveState, encode_hash: Callable[[Row], str | None], out: KeyedRows
) -> None:
    sid = row.sample_id
    live = state.rows.get(sid)
    if live is not None:
        same = live.row_digest == digest if live.row_digest else encode_hash(row) == live.encoding_hash
        if not same:
            out.changed.append(sid)
            out.todo.append(row)
        elif state.row_generation(sid) == state.generation:
            out.done += 1
        else:
            out.reused += 1
        return
    rec = state.skips.get(sid)
    if rec is not None and rec["generation"] == state.generation:
        out.done += 1
    elif rec is not None and rec["row_digest"] and rec["row_digest"] == digest:
        out.kept.append(rec)
    else:
        if rec is not None:
            out.retried.append(sid)
        out.todo.append(row)


def record_before_forward(writer: CacheWriter, keyed: KeyedRows, *, strict: bool) -> None:
    """Write what needs no teacher: supersede changed and dropped rows, record skips (a kept skip keeps
    its reason; the dataset row is the same). Each record is durable before its row is redone."""
    if strict and (keyed.unusable or keyed.kept):
        first = keyed.unusable[0] if keyed.unusable else None
        detail = (
            f"{first.source}: sample {first.sample_id!r}: {first.reason}: {first.detail}"
            if first
            else f"sample {keyed.kept[0]['sample_id']!r}: {keyed.kept[0]['reason']}: {keyed.kept[0]['detail']}"
        )
        raise DataError(detail)
    for sid in keyed.retried:
        writer.retry(sid)
    for sid in keyed.changed:
        writer.supersede(sid, SUPERSEDED_CHANGED)
    for sid in keyed.dropped:
        writer.supersede(sid, SUPERSEDED_UNUSABLE)
    for bad in keyed.unusable:
        writer.skip(bad.sample_id, bad.reason, f"{bad.source}: {bad.detail}")
    for rec in keyed.kept:
        writer.retry(rec["sample_id"])
        writer.skip(rec["sample_id"], rec["reason"], rec["detail"], rec["row_digest"])


def encoding_hash_of(encoder: RowEncoder) -> Callable[[Row], str | None]:
    """``encode_hash`` for :func:`key_rows`: the row's encoding hash, ``None`` when it cannot encode."""

    def encode_hash(row: Row) -> str | None:
        try:
            return encoder.encode(row).encoding_hash
        except DataError:
            return None

    return encode_hash


def generation_line(manifest: Manifest) -> str:
    """What the last generation did, from the manifest: ``N rows: A reused, B new, C changed
    (re-cached), D skipped``, and the rows the cache holds that this dataset does not."""
    g, counts = manifest.last_generation, manifest.counts
    line = (
        f"{g['rows_in']:,} rows: {g['reused']:,} reused, {g['new']:,} new, {g['changed']:,} changed "
        f"(re-cached), {g['skipped']:,} skipped"
    )
    held = counts["cached"] + counts["skipped"] - g["rows_in"]
    stored = manifest.superseded_versions
    if held > 0 or stored:
        line += (
            f"; the cache also holds {held:,} rows this dataset does not and {stored:,} superseded "
            "versions (`distill cache --compact` drops them)"
        )
    return line


def preview(
    plan: SplitPlan, root: Path, encoder: RowEncoder, written: tuple[str, str | None] | None = None
) -> KeyedRows:
    """:func:`key_rows` against the cache at ``root`` as it is now, writing nothing (``--dry-run``,
    and the rows a student writer writes before the teacher loads)."""
    from pipeline.cache.live import LiveState, scan

    state = scan(root) if root.is_dir() else LiveState(0, {}, [], {}, [], {})
    return key_rows(plan, state, encoding_hash_of(encoder), written)


def held_unchanged(root: Path, rows: list[Row | BadRow]) -> tuple[set[str], dict[str, str]]:
    """The sample_ids the cache at ``root`` holds live with the same row digest, and every digest
    computed. Such a row's images have the bytes they had when it was cached (and opened then), so
    the fast check does not open them again: on a large dataset with a few new rows that check would
    cost more than the rows' forward. A row whose digest cannot be taken (a missing image) is
    checked as usual."""
    from pipeline.cache.cachedir import SplitDir
    from pipeline.cache.live import scan

    if not SplitDir(root).finished:
        return set(), {}
    live = scan(root).rows  # read without the lock: the writer keys the rows again under it
    held, digests = set(), {}
    for r in rows:
        stored = live.get(r.sample_id)
        if not isinstance(r, Row) or stored is None or not stored.row_digest:
            continue
        try:
            digests[r.sample_id] = row_digest(r)
        except OSError:
            continue
        if digests[r.sample_id] == stored.row_digest:
            held.add(r.sample_id)
    return held, digests


def plan_split(
    cfg: DistillConfig, split: str, *, strict: bool = False, limit: int | None = None
) -> SplitPlan:
    """Read and check this rank's share of ``split`` (every image opened); raise when the split has no
    usable row (``DataError`` naming the file) or, with ``strict``, at the first unusable row."""
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 (or None for every row), got {limit}")
    from pipeline.cache.cachedir import CacheDir
    from pipeline.data import read_split_rows, require_rows
    from pipeline.dist import rank_world, sum_over_ranks
    from pipeline.splits import split_files
    from pipeline.teacher.written import partition_for_written

    files = split_files(cfg, split)
    path = ", ".join(files)
    rank, world = rank_world()
    rows = read_split_rows(files)[:limit]
    mine = rows[rank::world]
    held, digests = held_unchanged(CacheDir.of(cfg).split(split).root, mine)
    usable, unusable = partition_for_written(
        [r for r in mine if r.sample_id not in held], cfg.custom.written_responses, strict=strict
    )
    if held:  # back in file order
        checked = {id(r) for r in usable}
        usable = [r for r in mine if isinstance(r, Row) and (r.sample_id in held or id(r) in checked)]
    require_rows(path, sum_over_ranks(len(usable)), unusable, f"usable rows for the {split} split")
    ids = frozenset(r.sample_id for r in rows)
    return SplitPlan(split, path, len(mine), usable, unusable, files, digests, limit, ids)
