"""``CacheWriter``: writes samples into rolled, atomically renamed shards; resumable; one per rank.

Durability model (what survives an interruption at any point):

- a shard is written as ``shard-rRR-IIIII.arrow.tmp-PID`` and renamed only once closed and fsynced, so a
  ``.arrow`` file is complete by construction; tmp files are dead and removed on reopen (a writer
  removes only its own rank's) or merge. That they are dead is what the directory's writer lock
  (:mod:`pipeline.cache.lock`) guarantees: a writer refuses to open while another launch holds it;
- ``parts/rank-RR.json`` (fingerprint, layout, this rank's shards) is rewritten atomically after each
  rename; a shard renamed but not yet recorded is adopted from the file itself;
- every skip is appended to ``parts/rank-RR.skips.jsonl`` and fsynced before ``skip`` returns, and
  every superseded row (``supersede``: its dataset row changed) to ``parts/rank-RR.superseded.jsonl``
  before its new version is added (:mod:`pipeline.cache.live`).

Reopening a writer on such a directory keeps every complete shard and skip, of every rank, and
``done_ids()`` says which samples not to redo; on a finished cache it opens the next generation
(``live_rows()`` tells the cache stage what to reuse). Under torchrun every rank writes its own shards and
part; rank 0 calls :func:`merge_rank_manifests` after a barrier. A single process merges in ``finalize``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.cache.cachedir import SplitDir, read_json
from pipeline.cache.codec import encode_sample
from pipeline.cache.format import (
    DEFAULT_LOGPROB_ENCODING,
    MANIFEST_NAME,
    PARTS_DIR,
    SHARD_RE,
    CachedSample,
    Layout,
    shard_name,
)
from pipeline.cache.live import (
    LiveState,
    StoredRow,
    append_record,
    read_superseded_log,
    scan,
)
from pipeline.cache.lock import CacheLock
from pipeline.cache.manifest import check_compatible, header, read_skips, shard_tag_counts, write_json_atomic
from pipeline.cache.merge import merge_rank_manifests
from pipeline.cache.shards import digest_hex, row_digests, scan_shard, shard_meta
from pipeline.files import atomic_write
from pipeline.hashing import file_sha256

__all__ = ["CacheWriter", "merge_rank_manifests"]

# zstd level for Arrow's buffer compression. The packed planes are near-random bytes where only the
# entropy stage helps; measured at k=64 (B/token, write time): level 1 133.0 / 0.46 s, 3 134.7 / 0.28 s,
# 9 135.4 / 0.58 s, 19 131.4 / 3.0 s. Level 1 is the best that keeps up with any teacher.
ZSTD_LEVEL = 1
# Uncompressed bytes per record batch: the unit a random read decompresses (~1 ms for 1 MiB at k=64,
# most of it Arrow's fixed zstd set-up per buffer; 256 KiB batches cost 2.4 B/target more).
BATCH_BYTES = 1 << 20


class CacheWriter:
    """Context manager writing :class:`CachedSample` rows into ``root``; see the module docstring.

    Args:
        root: cache directory (created).
        fingerprint: JSON-able dict naming what the cache is for (teacher, tokenizer, encoding
            settings, data hash, k, temperature, dtype). Reopening with another one is an error.
        top_k, vocab_size: the width of every row's top-k and the id range ``[0, vocab_size)``.
        logprob_encoding: ``"quantized"`` (default, ~133 B/target at k=64) or ``"fp32"`` (bit-exact).
        shard_bytes: roll to a new shard once the current one reaches this many bytes on disk.
        rank, world_size: this writer's rank under torchrun (each rank writes its own shards).
        batch_bytes: packed bytes buffered per Arrow record batch (capped at ``shard_bytes``).
        extra_meta: JSON-able top-level manifest entries outside the fingerprint (e.g. ``sources``,
            where the inputs were on this machine): informative, never compared.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        fingerprint: dict[str, Any],
        top_k: int,
        vocab_size: int,
        logprob_encoding: str = DEFAULT_LOGPROB_ENCODING,
        shard_bytes: int = 256 * 2**20,
        rank: int = 0,
        world_size: int = 1,
        batch_bytes: int = BATCH_BYTES,
        extra_meta: dict[str, Any] | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if shard_bytes < 1:
            raise ValueError(f"shard_bytes must be positive, got {shard_bytes}")
        self.root = Path(root)
        self.where = SplitDir(self.root)
        self.fingerprint = json.loads(json.dumps(fingerprint))  # a JSON copy: what the manifest will hold
        self.extra_meta = json.loads(json.dumps(extra_meta or {}))
        self.layout = Layout.create(top_k, vocab_size, logprob_encoding)
        self.rank, self.world_size = rank, world_size
        self.shard_bytes = shard_bytes
        self.batch_bytes = max(1, min(batch_bytes, shard_bytes))
        self._schema = self.layout.schema(self.fingerprint)
        self._options = pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", compression_level=ZSTD_LEVEL))
        self._rows: list[dict[str, Any]] = []
        self._row_tags: list[tuple[str, ...]] = []  # tags of each buffered row
        self._shard_tags: dict[str, int] = {}
        self._buffered = 0
        self._sink: Any = None
        self._file_writer: Any = None
        self._tmp: Path | None = None
        self._finalized: dict[str, Any] | None = None
        self._finalize_tried = False
        (self.root / PARTS_DIR).mkdir(parents=True, exist_ok=True)
        CacheLock(self.root).check_not_foreign()  # before recovery deletes any temporary shard
        self._state: LiveState = self._check_existing()
        self.generation = self._state.generation
        self._done: set[str] = set(self._state.rows) | set(self._state.skips)
        self._shards: list[dict[str, Any]] = self._recover_own_shards()
        self._next_index = 1 + max(
            (int(SHARD_RE.match(s["file"]).group(2)) for s in self._shards),  # type: ignore[union-attr]
            default=-1,
        )
        self._rows_in: int | None = None
        self._reused: int | None = None
        self._dataset: Any = None
        self._write_part()
        self._skip_log = _open_log(self.where.skips_path(self.rank), read_skips)
        self._superseded_log = _open_log(self.where.superseded_path(self.rank), read_superseded_log)

    # -- setup -----------------------------------------------------------------------------------

    def _check_existing(self) -> LiveState:
        """Refuse to add to a cache built for other distribution settings or another layout; return
        what the directory holds (:func:`pipeline.cache.live.scan`)."""
        manifest = self.root / MANIFEST_NAME
        if manifest.exists():
            check_compatible(str(manifest), read_json(manifest), self.fingerprint, self.layout)
        for part in sorted((self.root / PARTS_DIR).glob("rank-*.json")):
            check_compatible(str(part), read_json(part), self.fingerprint, self.layout)
        state = scan(self.root)
        for name, schema in state.schemas.items():
            shard_layout, shard_fp = shard_meta(schema, f"shard {name}")
            check_compatible(
                f"shard {name}",
                {
                    "format_version": shard_layout.format_version,
                    "fingerprint": shard_fp,
                    "layout": shard_layout.to_dict(),
                },
                self.fingerprint,
                self.layout,
            )
        return state

    def _recover_own_shards(self) -> list[dict[str, Any]]:
        prefix = f"shard-r{self.rank:02d}-"
        for stale in self.root.glob(prefix + "*.arrow.tmp*"):
            stale.unlink(missing_ok=True)  # an interrupted shard: its samples are not in done_ids
        part = self.where.part_path(self.rank)
        listed = {s["file"]: s for s in read_json(part)["shards"]} if part.exists() else {}
        shards = []
        for path in self.where.shard_paths():
            if path.name.startswith(prefix):
                rec = listed.get(path.name)
                if not rec or rec["bytes"] != path.stat().st_size:
                    rec = scan_shard(path) | {"generation": self._state.shard_generation[path.name]}
                shards.append(rec)
        return shards

    def _write_part(self) -> None:
        part = header(self.fingerprint, self.layout) | {
            "rank": self.rank,
            "world_size": self.world_size,
            "generation": self.generation,
            "rows_in": self._rows_in,
            "reused": self._reused,
            "dataset": self._dataset,
            "shards": self._shards,
            "extra_meta": self.extra_meta,
        }
        write_json_atomic(self.where.part_path(self.rank), part)

    # -- writing ---------------------------------------------------------------------------------

    def done_ids(self) -> set[str]:
        """sample_ids live (cached or skipped): complete shards and skip logs of every rank as found at
        open, less superseded rows, plus this writer's own since. Partition the remaining rows by a
        rule that does not depend on this set (e.g. ``rows[rank::world]``), since other ranks may
        write meanwhile."""
        return set(self._done)

    @property
    def state(self) -> LiveState:
        """What the directory held at open (:func:`pipeline.cache.live.scan`), kept current by
        ``supersede`` and ``retry``; read it before either to key a dataset against it."""
        return self._state

    def live_rows(self) -> dict[str, StoredRow]:
        """The live stored rows found at open, by sample_id, less those superseded since."""
        return dict(self._state.rows)

    def live_skips(self) -> dict[str, dict[str, Any]]:
        """The live skip records found at open (each with its ``generation``), less those retried."""
        return dict(self._state.skips)

    def row_generation(self, sample_id: str) -> int:
        """The generation that stored ``sample_id``'s live row."""
        return self._state.row_generation(sample_id)

    def supersede(self, sample_id: str, reason: str) -> None:
        """Record that ``sample_id``'s live row no longer serves (its dataset row changed, or became
        unusable), durably, before its new version or skip is written; ``sample_id`` is then free."""
        self._check_open()
        row = self._state.rows.pop(sample_id, None)
        if row is None:
            raise ValueError(f"sample {sample_id!r} has no live row in {self.root}")
        rec = {
            "sample_id": sample_id,
            "shard": row.shard,
            "encoding_hash": row.encoding_hash,
            "generation": self.generation,
            "reason": reason,
        }
        append_record(self._superseded_log, rec)
        self._done.discard(sample_id)

    def retry(self, sample_id: str) -> None:
        """Let this generation cache or skip ``sample_id`` again, which an earlier one skipped."""
        self._check_open()
        rec = self._state.skips.get(sample_id)
        if rec is None or rec["generation"] >= self.generation:
            raise ValueError(f"sample {sample_id!r} was not skipped by an earlier generation of {self.root}")
        del self._state.skips[sample_id]
        self._done.discard(sample_id)

    def add(self, sample: CachedSample, tags: Iterable[str] = ()) -> None:
        """Buffer one sample (validated, then packed); it is durable once its shard is renamed.

        ``tags``: names this row is counted under (e.g. ``"retokenized"``): each shard's record holds
        ``tags`` ``{name: rows}``, and the merged manifest's ``counts.tags`` sums them, so the counts
        live and die with the rows (a resumed or multi-rank run neither loses nor double-counts them).
        """
        self._check_open()
        sample.validate(self.layout.top_k, self.layout.vocab_size)
        if sample.sample_id in self._done:
            raise ValueError(f"sample {sample.sample_id!r} is already cached or skipped in {self.root}")
        row = encode_sample(sample, self.layout)
        row.update(
            sample_id=sample.sample_id,
            encoding_hash=sample.encoding_hash,
            num_tokens=int(sample.num_tokens),
            num_targets=sample.num_targets,
            positions=sample.positions.astype(np.int32),
            teacher_written=bool(sample.teacher_written),
            written_text=sample.written_text,
            written_ids=np.asarray(sample.written_ids, np.int32),
            row_digest=sample.row_digest,
        )
        self._row_tags.append(tuple(dict.fromkeys(tags)))
        self._rows.append(row)
        self._done.add(sample.sample_id)
        self._buffered += sum(len(v) for v in row.values() if isinstance(v, bytes))
        if self._buffered >= self.batch_bytes:
            self._flush()

    def add_stored(self, row: dict[str, Any], tags: Iterable[str] = ()) -> None:
        """Buffer one row as another shard of the same layout stores it (``RecordBatch.to_pylist``
        values), unchanged: compaction copies rows this way, never decoding and re-encoding them.
        Columns older shards lack get their defaults (not teacher-written, unknown row digest)."""
        self._check_open()
        sid = row["sample_id"]
        if sid in self._done:
            raise ValueError(f"sample {sid!r} is already cached or skipped in {self.root}")
        defaults = {"teacher_written": False, "written_text": "", "written_ids": [], "row_digest": ""}
        out = {f.name: row.get(f.name, defaults.get(f.name)) for f in self._schema}
        for f in self._schema:  # list values as typed arrays, as ``add`` buffers them
            if pa.types.is_list(f.type) and out[f.name] is not None:
                out[f.name] = np.asarray(out[f.name], f.type.value_type.to_pandas_dtype())
        if missing := [k for k, v in out.items() if v is None]:
            raise ValueError(f"sample {sid!r}: stored row lacks columns {missing}")
        self._row_tags.append(tuple(dict.fromkeys(tags)))
        self._rows.append(out)
        self._done.add(sid)
        self._buffered += sum(len(v) for v in out.values() if isinstance(v, bytes))
        if self._buffered >= self.batch_bytes:
            self._flush()

    def skip(self, sample_id: str, reason: str, detail: str = "", row_digest: str = "") -> None:
        """Record that ``sample_id`` is not cached, with a short reason code (``"missing_image"``) and,
        when known, the digest of the dataset row (a later generation keeps the skip while it holds)."""
        self._check_open()
        if not reason or any(ch.isspace() for ch in reason):
            raise ValueError(f"skip reason must be a short code without spaces, got {reason!r}")
        if sample_id in self._done:
            raise ValueError(f"sample {sample_id!r} is already cached or skipped in {self.root}")
        rec = {
            "sample_id": sample_id,
            "reason": reason,
            "detail": detail,
            "generation": self.generation,
            "row_digest": row_digest,
        }
        append_record(self._skip_log, rec)
        self._done.add(sample_id)

    def _flush(self) -> None:
        """Write the buffered rows as one record batch; roll the shard past the byte budget."""
        if not self._rows:
            return
        if self._file_writer is None:
            self._tmp = self.root / f"{shard_name(self.rank, self._next_index)}.tmp-{os.getpid()}"
            self._sink = pa.OSFile(str(self._tmp), "wb")
            self._file_writer = pa.ipc.new_file(self._sink, self._schema, options=self._options)
            self._shard_rows = self._shard_targets = self._shard_digest = 0
            self._shard_tags = {}
        batch = self._record_batch(self._rows)
        self._file_writer.write_batch(batch)
        self._shard_rows += batch.num_rows
        self._shard_targets += sum(r["num_targets"] for r in self._rows)
        self._shard_digest += sum(row_digests(batch))
        for tag in (t for tags in self._row_tags for t in tags):
            self._shard_tags[tag] = self._shard_tags.get(tag, 0) + 1
        self._rows, self._row_tags, self._buffered = [], [], 0
        if self._sink.tell() >= self.shard_bytes:
            self._seal()

    def _record_batch(self, rows: list[dict[str, Any]]) -> pa.RecordBatch:
        cols: list[pa.Array] = []
        for f in self._schema:
            values = [r[f.name] for r in rows]
            if pa.types.is_binary(f.type):
                cols.append(_binary_array(values))
            elif pa.types.is_list(f.type):
                offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int32)
                flat = np.concatenate(values) if values else np.empty(0)
                cols.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, f.type.value_type)))
            else:
                cols.append(pa.array(values, f.type))
        return pa.RecordBatch.from_arrays(cols, schema=self._schema)

    def _seal(self) -> None:
        """Close the current shard, fsync, rename it complete, and record it in this rank's part."""
        if self._file_writer is None:
            return
        assert self._tmp is not None
        self._file_writer.close()
        self._sink.close()
        with open(self._tmp, "rb") as f:
            os.fsync(f.fileno())
        final = self.root / shard_name(self.rank, self._next_index)
        os.replace(self._tmp, final)
        _fsync_dir(self.root)
        self._shards.append(
            {
                "file": final.name,
                "rows": self._shard_rows,
                "targets": self._shard_targets,
                "bytes": final.stat().st_size,
                "sha256": file_sha256(final),
                "digest": digest_hex(self._shard_digest),
                "tags": dict(sorted(self._shard_tags.items())),
                "generation": self.generation,
            }
        )
        self._file_writer = self._sink = self._tmp = None
        self._next_index += 1
        self._write_part()

    # -- finishing -------------------------------------------------------------------------------

    def finalize(
        self, rows_in: int | None = None, *, reused: int | None = None, dataset: Any = None
    ) -> dict[str, Any]:
        """Seal the last shard and record this rank's part; a single process also merges the manifest.

        ``rows_in``: the rows of this generation's dataset (this rank's share); ``reused``: how many of
        them earlier generations hold unchanged; ``dataset``: a JSON record of what the rows came from.
        Returns counts ``{"rows_in", "cached", "skipped", "skipped_by_reason", "targets"}``: with
        ``world_size == 1`` over the whole cache (:func:`merge_rank_manifests`, which checks
        ``rows_in == reused + new + changed + skipped`` for this generation: ``CacheFormatError``
        otherwise, and no manifest). With several ranks, this rank's own shards and skips; the part
        records ``rows_in`` and ``reused`` and the merge checks them in total.
        """
        if self._finalized is not None:
            return self._finalized
        self._finalize_tried = True
        self._flush()
        self._seal()
        self._skip_log.close()
        self._superseded_log.close()
        self._rows_in, self._reused = rows_in, reused
        self._dataset = json.loads(json.dumps(dataset))
        self._write_part()
        if self.world_size == 1:
            counts = merge_rank_manifests(self.root, rows_in=rows_in)
        else:
            own = read_skips(self.where.skips_path(self.rank))
            skipped = [r for r in own if r["generation"] == self.generation]
            reasons: dict[str, int] = {}
            for rec in skipped:
                reasons[rec["reason"]] = reasons.get(rec["reason"], 0) + 1
            counts = {
                "rows_in": rows_in,
                "cached": sum(s["rows"] for s in self._shards if s.get("generation") == self.generation),
                "skipped": len(skipped),
                "skipped_by_reason": dict(sorted(reasons.items())),
                "targets": sum(s["targets"] for s in self._shards),
            } | shard_tag_counts(self._shards)
        self._finalized = counts
        return counts

    def _check_open(self) -> None:
        if self._finalized is not None:
            raise RuntimeError(f"writer for {self.root} is finalized")

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            if not self._finalize_tried:  # a failed finalize (rows_in mismatch) is not retried blindly
                self.finalize()
            return
        # Keep the work done: seal what is buffered so a resume starts after it; never merge here.
        if self._finalized is None:
            try:
                self._flush()
                self._seal()
                self._skip_log.close()
                self._superseded_log.close()
            except Exception:  # the original error matters more; a tmp shard is simply redone
                pass


def _open_log(path: Path, read: Any) -> Any:
    """Open an append-only JSONL log, first dropping a torn last line (``read`` keeps whole records)
    so the next append starts on a fresh line. The cleaned log goes to a temporary file renamed over
    the old one: a kill mid-rewrite leaves the old log, never an empty one (an emptied superseded log
    would make every superseded row live again, "cached twice")."""
    if path.exists():
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in read(path))
        if text != path.read_text(encoding="utf-8"):
            with atomic_write(path) as f:
                f.write(text)
    return open(path, "a", encoding="utf-8")  # closed by finalize or __exit__


def _binary_array(values: list[bytes]) -> pa.Array:
    offsets = np.zeros(len(values) + 1, np.int32)
    np.cumsum([len(v) for v in values], out=offsets[1:])
    data = b"".join(values)
    return pa.Array.from_buffers(pa.binary(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
