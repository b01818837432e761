"""``CacheReader``: validated, checksummed random access to a teacher cache, decoded into tensors.

Checksum policy: with ``verify="open"`` (default) every shard's size and sha256 are checked against the
manifest when the reader opens; with ``verify="lazy"`` sizes are checked at open and a shard's sha256
the first time anything is decoded from it (in this process, or before pickling to a worker). Either
way nothing decoded from a shard is returned before its checksum matched, and a truncated or altered
shard is a ``CacheFormatError`` naming it. Nothing here unpickles or executes stored data.

What it serves is what the manifest records: at open, every superseded record must name the row it
recorded (its encoding hash) and ``content_digest`` must equal the shards' digests less the
superseded rows' (so swapped shards or an edited digest are refused, naming the shard). The reader
maps every shard when it opens and keeps them mapped: a compaction that replaces the directory under
a running reader changes nothing it reads. Every row it returns is checked to be the sample asked for;
a copy unpickled in a worker, which maps the files again by name, says in one line that the cache
changed under it rather than serve another row.

Not thread-safe (the decoder reuses scratch buffers); give each dataloader worker its own copy (the
reader pickles without its open files).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipeline.cache.cachedir import read_json
from pipeline.cache.codec import Decoded, Decoder
from pipeline.cache.format import FORMAT_NAME, MANIFEST_NAME, CachedSample, Layout, check_format_version
from pipeline.cache.manifest import compare_fingerprints, mismatch_error, settings_only
from pipeline.cache.shards import live_digest, shard_meta

if TYPE_CHECKING:
    import torch

__all__ = ["CacheReader", "compare_fingerprints"]

_NUMPY = {pa.int32(): np.dtype(np.int32), pa.float32(): np.dtype(np.float32)}  # list value types
_LIST_COLUMNS = ("positions", "escape_target_ids", "escape_target_logprobs", "escape_gaps")


class _Block:
    """One decompressed record batch with numpy views of its columns."""

    def __init__(self, batch: pa.RecordBatch, layout: Layout):
        self.num_targets = batch.column("num_targets").to_numpy()
        self.num_tokens = batch.column("num_tokens").to_numpy()
        self.sample_ids = batch.column("sample_id").to_pylist()
        self.hashes = batch.column("encoding_hash").to_pylist()
        # Teacher-written responses (columns absent in shards written before they existed).
        names = batch.schema.names
        n = batch.num_rows
        self.written = (
            batch.column("teacher_written").to_pylist() if "teacher_written" in names else [False] * n
        )
        self.written_text = batch.column("written_text").to_pylist() if "written_text" in names else [""] * n
        self.written_ids = batch.column("written_ids").to_pylist() if "written_ids" in names else [[]] * n
        self.row_digests = batch.column("row_digest").to_pylist() if "row_digest" in names else [""] * n
        self.ragged: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in (*layout.plane_columns(), *_LIST_COLUMNS):
            arr = batch.column(name)
            offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset : arr.offset + len(arr) + 1]
            if pa.types.is_list(arr.type):
                child = arr.values
                dtype = _NUMPY[child.type]
                data = np.frombuffer(child.buffers()[1] or b"", dtype)[child.offset :]
            else:
                data = np.frombuffer(arr.buffers()[2] or b"", np.uint8)
            self.ragged[name] = (offsets, data)


class CacheReader:
    """Open the cache at ``root``; see the module docstring for checksums.

    Args:
        root: the cache directory (holding ``manifest.json``).
        expected_fingerprint: if given, must equal the manifest's fingerprint, else
            ``CacheMismatchError`` listing each differing dotted field.
        verify: ``"open"`` or ``"lazy"``.
        cached_batches: decompressed record batches kept for reuse (a random read decompresses the
            whole ~1 MiB record batch around its row, so neighbours read soon after come for free).
    """

    def __init__(
        self,
        root: str | Path,
        expected_fingerprint: dict[str, Any] | None = None,
        *,
        verify: str = "open",
        cached_batches: int = 4,
    ):
        if verify not in ("open", "lazy"):
            raise ValueError(f"verify must be 'open' or 'lazy', got {verify!r}")
        self.root = Path(root)
        self.manifest: dict[str, Any] = self._read_manifest(expected_fingerprint)
        self.layout = Layout.from_dict(self.manifest["layout"], str(self.root / MANIFEST_NAME))
        self.top_k, self.vocab_size = self.layout.top_k, self.layout.vocab_size
        self._shards: list[dict[str, Any]] = self.manifest["shards"]
        self._verified: set[int] = set()
        self._maps: dict[int, Any] = {}
        self._map_shards(verify == "open")
        self._cached_batches = cached_batches
        self._files: dict[int, Any] = {}
        self._blocks: OrderedDict[tuple[int, int], _Block] = OrderedDict()
        self._decoder = Decoder(self.layout)
        self._empty = {name: np.empty(0, np.uint8) for name in self.layout.plane_columns()}
        self._empty.update(
            positions=np.empty(0, np.int32),
            escape_target_ids=np.empty(0, np.int32),
            escape_target_logprobs=np.empty(0, np.float32),
            escape_gaps=np.empty(0, np.int32),
        )
        self._index: dict[str, tuple[int, int, int]] = {}
        self.sample_ids: list[str] = []
        self._build_index()
        self._check_counts()
        self._check_content_digest()

    def _read_manifest(self, expected_fingerprint: dict[str, Any] | None) -> dict[str, Any]:
        """The manifest, its format and version checked, and its fingerprint against the expected one
        (``CacheMismatchError`` listing each differing dotted field)."""
        path = self.root / MANIFEST_NAME
        if not path.is_file():
            raise _format_error(
                f"{self.root}: no {MANIFEST_NAME} (not a cache, or its writers never finished)"
            )
        manifest: dict[str, Any] = read_json(path)
        if manifest.get("format") != FORMAT_NAME:
            raise _format_error(f"{path}: not a teacher-cache manifest (format {manifest.get('format')!r})")
        check_format_version(manifest, str(path))
        if expected_fingerprint is not None:
            diffs = compare_fingerprints(
                settings_only(expected_fingerprint), settings_only(manifest["fingerprint"])
            )
            if diffs:
                raise mismatch_error(f"cache {self.root}", diffs)
        return manifest

    def _map_shards(self, verify: bool) -> None:
        """Map every shard now and keep it mapped: the snapshot this reader serves, so a compaction
        that replaces the directory under a running reader changes nothing it reads. Sizes are
        checked here, checksums here (``verify``) or on first read."""
        for i, shard in enumerate(self._shards):
            p = self.root / shard["file"]
            self._maps[i] = self._guard(i, lambda p=p: pa.memory_map(str(p))) if p.is_file() else None
            size = self._maps[i].size() if self._maps[i] is not None else None
            if size != shard["bytes"]:
                state = "missing" if size is None else "truncated or altered"
                raise _format_error(
                    f"shard {shard['file']} in {self.root}: {state} ({size} bytes on disk, manifest says "
                    f"{shard['bytes']})"
                )
            if verify:
                self._verify(i)

    def _build_index(self) -> None:
        """sample_id -> (shard, record batch, row) of every live row, each shard's metadata and rows
        checked against the manifest; a superseded row is checked against its record and left out."""
        gone = _superseded(self.manifest)
        for i in range(len(self._shards)):
            schema, batch_ids, hashes = self._guard(i, lambda i=i: _batch_ids(self._maps[i]))
            self._guard(i, lambda schema=schema: self._check_layout(schema))
            self._check_shard(i, schema, batch_ids)
            name = self._shards[i]["file"]
            for b, ids in enumerate(batch_ids):
                for row, sid in enumerate(ids):
                    if (sid, name) in gone:
                        self._check_superseded(name, sid, hashes[b][row], gone[(sid, name)])
                        continue  # an earlier version of a row the cache holds again, or a dropped one
                    if sid in self._index:
                        first = self._shards[self._index[sid][0]]["file"]
                        raise _format_error(
                            f"{self.root}: sample {sid!r} is stored twice ({first} and {name}): a shard "
                            "was copied or swapped; rebuild the cache"
                        )
                    self._index[sid] = (i, b, row)
                    self.sample_ids.append(sid)

    # -- shards ----------------------------------------------------------------------------------

    def _check_superseded(self, name: str, sid: str, stored: str, rec: dict[str, Any]) -> None:
        """The row a superseded record names is the one it recorded: a shard swapped for another
        (manifest entries fixed to match) would otherwise serve the stale version of a row."""
        if rec.get("encoding_hash") and rec["encoding_hash"] != stored:
            raise _format_error(
                f"shard {name} in {self.root}: holds sample {sid!r} with encoding hash {stored[:12]}..., "
                f"but {MANIFEST_NAME}'s superseded record for it says {str(rec['encoding_hash'])[:12]}...: "
                "shards were swapped or replaced; rebuild the cache"
            )

    def _check_content_digest(self) -> None:
        """``content_digest`` equals the shards' digests less the superseded rows' (read from the
        shards): an edited digest, or swapped shards whose superseded rows are not the recorded ones,
        is refused. Reads only the record batches that hold superseded rows."""
        recorded = self.manifest.get("content_digest")
        if not recorded or any("digest" not in s for s in self._shards):
            return  # written before digests existed
        by_name = {s["file"]: i for i, s in enumerate(self._shards)}
        superseded = [r for r in self.manifest.get("superseded") or [] if isinstance(r, dict)]
        for r in superseded:
            if str(r.get("shard")) not in by_name:
                raise _format_error(
                    f"{self.root / MANIFEST_NAME}: superseded record of sample {r.get('sample_id')!r} names "
                    f"shard {r.get('shard')}, which the cache does not list; rebuild the cache"
                )
        found = live_digest(self._shards, superseded, lambda name: self._maps[by_name[name]])
        if found != recorded:
            shards = sorted({str(r["shard"]) for r in superseded}) or [s["file"] for s in self._shards]
            raise _format_error(
                f"{self.root / MANIFEST_NAME}: content_digest {str(recorded)[:12]}... does not match the "
                f"shards ({found[:12]}... from their digests, less the superseded rows of "
                f"{', '.join(shards[:3])}{' ...' if len(shards) > 3 else ''}): the manifest was edited or "
                "shards were swapped; rebuild the cache"
            )

    def _sha256(self, i: int) -> str:
        """sha256 of shard ``i`` as this reader maps it (its snapshot), or of the file by name."""
        source = self._map(i)
        h, size, offset = hashlib.sha256(), source.size(), 0
        while offset < size:
            chunk = source.read_at(min(1 << 23, size - offset), offset)
            h.update(chunk)
            offset += len(chunk)
        return h.hexdigest()

    def _verify(self, i: int) -> None:
        if i in self._verified:
            return
        shard = self._shards[i]
        if self._sha256(i) != shard["sha256"]:
            if self._manifest_changed():
                raise self._changed(f"shard {shard['file']} is another file now")
            raise _format_error(
                f"shard {shard['file']} in {self.root}: checksum mismatch (corrupt; rebuild the cache)"
            )
        self._verified.add(i)

    def _check_shard(self, i: int, schema: pa.Schema, batch_ids: list[list[str]]) -> None:
        """A shard must carry the manifest's fingerprint (each shard stores its own, so an edited
        manifest or a shard from another cache shows) and hold the rows the manifest lists."""
        name = self._shards[i]["file"]
        _, stored = shard_meta(schema, f"shard {name} in {self.root}")
        diffs = compare_fingerprints(
            settings_only(self.manifest.get("fingerprint") or {}), settings_only(stored)
        )
        if diffs:
            raise _format_error(
                f"shard {name} in {self.root}: its own fingerprint differs from {MANIFEST_NAME}'s in "
                f"{', '.join(diffs)}: the manifest was edited or the shard belongs to another cache; "
                "rebuild the cache"
            )
        rows = sum(len(ids) for ids in batch_ids)
        if rows != self._shards[i].get("rows"):
            raise _format_error(
                f"shard {name} in {self.root}: holds {rows} rows, {MANIFEST_NAME} says "
                f"{self._shards[i].get('rows')}"
            )

    def _check_counts(self) -> None:
        """The manifest's counts agree with the shards, and no sample is both cached and skipped."""
        counts = self.manifest.get("counts") or {}
        if counts.get("cached") is not None and counts["cached"] != len(self.sample_ids):
            raise _format_error(
                f"{self.root / MANIFEST_NAME}: counts.cached is {counts['cached']} but the shards hold "
                f"{len(self.sample_ids)} samples"
            )
        for rec in self.manifest.get("skipped") or []:
            sid = rec.get("sample_id") if isinstance(rec, dict) else None
            if sid in self._index:
                raise _format_error(
                    f"{self.root}: sample {sid!r} is both cached ({self._shards[self._index[sid][0]]['file']}) "
                    f"and recorded as skipped ({rec.get('reason')})"
                )

    def skipped(self) -> dict[str, dict[str, str]]:
        """sample_id -> ``{"reason", "detail"}`` for every row the cache stage recorded as skipped."""
        out = {}
        for rec in self.manifest.get("skipped") or []:
            if isinstance(rec, dict) and isinstance(rec.get("sample_id"), str):
                out[rec["sample_id"]] = {
                    "reason": str(rec.get("reason", "")),
                    "detail": str(rec.get("detail", "")),
                }
        return out

    def verify_all(self) -> None:
        """Check every shard's sha256 now (``distill inspect`` audits this way)."""
        for i in range(len(self._shards)):
            self._verify(i)

    def _guard(self, i: int, fn: Any) -> Any:
        try:
            return fn()
        except (OSError, pa.ArrowException, ValueError, IndexError, KeyError) as err:
            raise _format_error(
                f"shard {self._shards[i]['file']} in {self.root}: unreadable ({err})"
            ) from err

    def _file(self, i: int) -> Any:
        if i not in self._files:
            source = self._map(i)

            def open_() -> Any:
                options = pa.ipc.IpcReadOptions(use_threads=False)
                reader = pa.ipc.open_file(source, options=options)
                self._check_layout(reader.schema)
                return reader

            self._files[i] = self._guard(i, open_)
        return self._files[i]

    def _map(self, i: int) -> Any:
        """Shard ``i`` as mapped at open; a copy unpickled in a worker maps the file again, by name."""
        if self._maps.get(i) is None:
            path = self.root / self._shards[i]["file"]
            if not path.is_file() or path.stat().st_size != self._shards[i]["bytes"]:
                raise self._changed(f"shard {path.name} is gone or not the size it was")
            self._maps[i] = self._guard(i, lambda: pa.memory_map(str(path)))
        return self._maps[i]

    def _manifest_changed(self) -> bool:
        try:
            return bool(read_json(self.root / MANIFEST_NAME) != self.manifest)
        except Exception:  # gone or unreadable: changed too
            return True

    def _changed(self, what: str) -> Exception:
        return _format_error(
            f"{self.root}: the cache changed since this reader opened it ({what}): it was compacted or "
            "rewritten under a running reader; start the run again"
        )

    def _check_layout(self, schema: pa.Schema) -> None:
        if Layout.from_schema(schema, "shard") != self.layout:
            raise ValueError("shard layout differs from the manifest's")

    def _block(self, i: int, b: int) -> _Block:
        block = self._blocks.get((i, b))
        if block is None:
            self._verify(i)
            block = self._guard(i, lambda: _Block(self._file(i).get_batch(b), self.layout))
            self._blocks[(i, b)] = block
            while len(self._blocks) > self._cached_batches:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end((i, b))
        return block

    # -- access ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._index

    def _locate(self, sample_id: str) -> tuple[int, int, int]:
        try:
            return self._index[sample_id]
        except KeyError:
            raise KeyError(f"sample {sample_id!r} is not in the cache at {self.root}") from None

    def _decode(
        self, sample_ids: list[str]
    ) -> tuple[Decoded, dict[str, np.ndarray], list[tuple[_Block, int]]]:
        """Decode the targets of ``sample_ids`` (in that order), with the ragged list columns."""
        where = [self._locate(s) for s in sample_ids]
        rows = [(self._block(i, b), r) for i, b, r in where]
        for sid, (i, b, _), (block, r) in zip(sample_ids, where, rows, strict=True):
            if r >= len(block.sample_ids) or block.sample_ids[r] != sid:  # serve only what was asked for
                name = self._shards[i]["file"]
                raise self._changed(f"{name} batch {b} row {r} does not hold sample {sid!r}")
        runs: list[tuple[_Block, int, int]] = []  # consecutive rows of one block are sliced at once
        for block, r in rows:
            if runs and runs[-1][0] is block and runs[-1][2] == r:
                runs[-1] = (block, runs[-1][1], r + 1)
            else:
                runs.append((block, r, r + 1))
        cols: dict[str, np.ndarray] = {}
        for name in (*self.layout.plane_columns(), *_LIST_COLUMNS):
            parts = [
                blk.ragged[name][1][blk.ragged[name][0][r0] : blk.ragged[name][0][r1]] for blk, r0, r1 in runs
            ]
            if not parts:  # no samples asked for: typed empties
                parts = [self._empty[name]]
            cols[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        shard = where[0][0] if where else 0
        decoded = self._guard(shard, lambda: self._decoder.decode(cols))
        return decoded, cols, rows

    def get(self, sample_id: str) -> CachedSample:
        """One sample, decoded (numpy arrays as :class:`CachedSample` documents)."""
        d, cols, rows = self._decode([sample_id])
        block, r = rows[0]
        return _sample(block, r, d, cols["positions"], slice(None))

    def batch(self, sample_ids: list[str]) -> dict[str, torch.Tensor]:
        """Targets of ``sample_ids`` concatenated in that order, as tensors ready for the loss.

        Returns ``topk_ids`` int64 [N, k], ``topk_logprobs`` float32 [N, k], ``tail_logprobs`` float32 [N],
        ``target_ids`` int64 [N], ``target_logprobs`` float32 [N], ``positions`` int64 [N],
        ``batch_index`` int64 [N] (index into ``sample_ids``), ``num_targets`` int64 [B], ``cached`` bool
        [N] (all True): ``pipeline.cache.targets.batch_targets``' dict plus positions and batch index.
        """
        import torch

        from pipeline.cache.targets import batch_targets

        d, cols, rows = self._decode(list(sample_ids))
        num_targets = np.array([block.num_targets[r] for block, r in rows], np.int64)
        out = batch_targets(
            d.topk_ids, d.topk_logprobs, d.tail_logprobs, d.target_ids, d.target_logprobs, num_targets
        )
        out["positions"] = torch.from_numpy(cols["positions"].astype(np.int64))
        out["batch_index"] = torch.from_numpy(np.repeat(np.arange(len(rows), dtype=np.int64), num_targets))
        return out

    def iter_blocks(self) -> Any:
        """Yield ``(block, Decoded, positions)`` per record batch in storage order (for export)."""
        for i in range(len(self._shards)):
            for b in range(self._file(i).num_record_batches):
                block = self._block(i, b)
                d, cols, _ = self._decode(block.sample_ids)
                yield block, d, cols["positions"]

    def iter_live_batches(self) -> Any:
        """Yield ``(record batch, indices of its live rows)`` in storage order, undecoded, each
        shard's checksum verified first (compaction copies rows as stored)."""
        for i in range(len(self._shards)):
            self._verify(i)
            for b in range(self._file(i).num_record_batches):
                batch = self._guard(i, lambda i=i, b=b: self._file(i).get_batch(b))
                ids = batch.column("sample_id").to_pylist()
                yield batch, [r for r, sid in enumerate(ids) if self._index.get(sid) == (i, b, r)]

    def iter_samples(self) -> Any:
        """Yield every :class:`CachedSample` in storage order, decoding one record batch at a time."""
        for block, d, positions in self.iter_blocks():
            ends = np.cumsum(block.num_targets)
            for r in range(len(block.sample_ids)):
                start = int(ends[r] - block.num_targets[r])
                yield _sample(block, r, d, positions, slice(start, int(ends[r])))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"], state["_blocks"], state["_maps"] = {}, OrderedDict(), {}
        return state


def _sample(block: _Block, r: int, d: Decoded, positions: np.ndarray, sl: slice) -> CachedSample:
    """Row ``r`` of ``block`` as a :class:`CachedSample`; its targets are ``sl`` of ``d``/``positions``."""
    return CachedSample(
        sample_id=block.sample_ids[r],
        encoding_hash=block.hashes[r],
        num_tokens=int(block.num_tokens[r]),
        positions=positions[sl].astype(np.int64),
        target_ids=d.target_ids[sl],
        topk_ids=d.topk_ids[sl],
        topk_logprobs=d.topk_logprobs[sl],
        tail_logprobs=d.tail_logprobs[sl],
        target_logprobs=d.target_logprobs[sl],
        teacher_written=bool(block.written[r]),
        written_text=block.written_text[r],
        written_ids=np.asarray(block.written_ids[r], np.int64),
        row_digest=block.row_digests[r],
    )


def _batch_ids(source: Any) -> tuple[pa.Schema, list[list[str]], list[list[str]]]:
    """Schema, and sample_ids and encoding hashes per record batch of a shard (an Arrow source),
    decompressing only those two columns."""
    schema = pa.ipc.open_file(source).schema
    wanted = [schema.get_field_index("sample_id"), schema.get_field_index("encoding_hash")]
    options = pa.ipc.IpcReadOptions(included_fields=wanted, use_threads=False)
    reader = pa.ipc.open_file(source, options=options)
    batches = [reader.get_batch(b) for b in range(reader.num_record_batches)]
    return (
        reader.schema,
        [b.column("sample_id").to_pylist() for b in batches],
        [b.column("encoding_hash").to_pylist() for b in batches],
    )


def _superseded(manifest: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """``(sample_id, shard)`` -> record, for every stored row the manifest records as no longer live."""
    out = {}
    for rec in manifest.get("superseded") or []:
        if isinstance(rec, dict):
            out[(str(rec.get("sample_id")), str(rec.get("shard")))] = rec
    return out


def _format_error(message: str) -> Exception:
    from pipeline.errors import CacheFormatError

    return CacheFormatError(message)
