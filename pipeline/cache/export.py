"""Plain copies of a cache for tools that do not speak its codec (``distill inspect --export``).

The shards store id-sorted delta planes and quantised levels; this writes the decoded values of the
*live* rows (one per ``sample_id``: a changed or unusable row's superseded version stays stored until
compaction, and is left out) as plain list columns, as Parquet, as an Arrow IPC stream (what
``datasets.Dataset.from_file`` reads) or as JSON Lines. The file is written to a temporary name and
renamed once complete (:func:`pipeline.files.atomic_path`): a full disk is one ``DiskFullError`` line
and leaves the old file, if any, as it was.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.cache.format import CachedSample
from pipeline.cache.reader import CacheReader
from pipeline.errors import ConfigError
from pipeline.files import atomic_path

# Suffix -> what is written. CSV cannot hold the per-target list columns, so it is refused, never
# written as something else under its name.
EXPORT_FORMATS = {".parquet": "Parquet", ".arrow": "Arrow IPC stream", ".jsonl": "JSON Lines"}
ROWS_PER_BATCH = 512  # samples per written record batch (row group, for Parquet)


def export_format(out_path: str | Path, cache_root: str | Path | None = None) -> str:
    """The format ``out_path``'s suffix asks for; ``ConfigError`` naming the path for an unknown
    suffix, a directory that does not exist, or a path inside ``cache_root`` (the export would replace
    one of the cache's own files). Checked before anything is read or written."""
    out_path = Path(out_path)
    fmt = EXPORT_FORMATS.get(out_path.suffix.lower())
    if fmt is None:
        why = " (CSV cannot hold per-target lists)" if out_path.suffix.lower() == ".csv" else ""
        raise ConfigError(
            f"--export {out_path}: unknown suffix {out_path.suffix or '(none)'!r}{why}; use one of "
            + ", ".join(f"{k} ({v})" for k, v in EXPORT_FORMATS.items())
        )
    if not out_path.parent.is_dir():
        raise ConfigError(f"--export {out_path}: directory {out_path.parent} does not exist; create it first")
    if cache_root is not None and out_path.resolve().is_relative_to(Path(cache_root).resolve()):
        raise ConfigError(
            f"--export {out_path}: is inside the cache directory {cache_root} (it would replace or add to "
            "the cache's own files); export to a path outside it"
        )
    return fmt


def live_samples(reader: Any) -> Iterator[CachedSample]:
    """Every live sample of ``reader``, once each, in storage order.

    ``CacheReader.iter_samples`` decodes whole record batches, so it is used only while every stored row
    is live; a cache with superseded rows (the manifest's ``superseded`` records) is read by live
    ``sample_id`` through ``get``, which never serves a superseded version. Any other object with the
    reader surface (``sample_ids``, ``get``; tests wrap readers) is read through ``get`` too.
    """
    manifest = getattr(reader, "manifest", None) or {}
    if hasattr(reader, "iter_samples") and not manifest.get("superseded"):
        yield from reader.iter_samples()
        return
    for sid in reader.sample_ids:
        yield reader.get(sid)


def export_plain(cache_root: str | Path, out_path: str | Path) -> dict[str, int]:
    """Write a plain copy of a cache's live rows (decoded values) with list columns: ``.parquet``
    Parquet, ``.arrow`` an Arrow IPC *stream* (``pa.ipc.open_stream``; what
    ``datasets.Dataset.from_file`` reads), ``.jsonl`` one JSON object per sample (``-inf`` logprobs as
    ``null``); any other suffix, or a path inside ``cache_root``, is a ``ConfigError``.

    One row per live sample: ``sample_id``, ``encoding_hash``, ``num_tokens`` and per-target lists
    ``positions``, ``target_ids``, ``target_logprobs``, ``tail_logprobs``, ``topk_ids`` (list of fixed-size
    lists of k int32), ``topk_logprobs`` (same, float32). Returns ``{"rows", "targets"}``.
    """
    fmt = export_format(out_path, cache_root)
    reader = CacheReader(cache_root, verify="lazy")
    k = reader.top_k
    schema = pa.schema(
        [
            ("sample_id", pa.string()),
            ("encoding_hash", pa.string()),
            ("num_tokens", pa.int32()),
            ("positions", pa.list_(pa.int32())),
            ("target_ids", pa.list_(pa.int32())),
            ("target_logprobs", pa.list_(pa.float32())),
            ("tail_logprobs", pa.list_(pa.float32())),
            ("topk_ids", pa.list_(pa.list_(pa.int32(), k))),
            ("topk_logprobs", pa.list_(pa.list_(pa.float32(), k))),
        ],
        metadata={b"vlm_distill.manifest": _manifest_json(reader.manifest)},
    )
    rows = targets = 0
    samples = live_samples(reader)
    with atomic_path(out_path) as tmp, _open_sink(fmt, tmp, schema) as sink:
        while chunk := list(islice(samples, ROWS_PER_BATCH)):
            batch = _record_batch(chunk, schema, k)
            sink.write_batch(batch)
            rows += batch.num_rows
            targets += sum(s.num_targets for s in chunk)
    return {"rows": rows, "targets": targets}


def _open_sink(fmt: str, path: Path, schema: pa.Schema) -> Any:
    """A ``write_batch`` sink (a context manager) writing ``fmt`` to ``path``."""
    if fmt == "Parquet":
        import pyarrow.parquet as pq

        return pq.ParquetWriter(str(path), schema, compression="zstd")
    if fmt == "JSON Lines":
        return _JsonLines(path)
    return pa.ipc.new_stream(str(path), schema, options=pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd")))


def _record_batch(samples: list[CachedSample], schema: pa.Schema, k: int) -> pa.RecordBatch:
    """``samples`` as one record batch of ``schema``: their targets concatenated under list offsets."""
    counts = [s.num_targets for s in samples]
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))

    def cat(name: str, dtype: type) -> np.ndarray:
        return np.concatenate([getattr(s, name) for s in samples]).astype(dtype)

    def lst(values: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(offsets, pa.array(values))

    def fixed(values: np.ndarray) -> pa.Array:
        inner = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), k)
        return pa.ListArray.from_arrays(offsets, inner)

    return pa.RecordBatch.from_arrays(
        [
            pa.array([s.sample_id for s in samples], pa.string()),
            pa.array([s.encoding_hash for s in samples], pa.string()),
            pa.array([s.num_tokens for s in samples], pa.int32()),
            lst(cat("positions", np.int32)),
            lst(cat("target_ids", np.int32)),
            lst(cat("target_logprobs", np.float32)),
            lst(cat("tail_logprobs", np.float32)),
            fixed(cat("topk_ids", np.int32)),
            fixed(cat("topk_logprobs", np.float32)),
        ],
        schema=schema,
    )


def _manifest_json(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, sort_keys=True).encode()


class _JsonLines:
    """``write_batch`` sink writing one JSON object per row; non-finite floats (a zero probability's
    ``-inf``) become ``null``, since JSON has no infinity."""

    def __init__(self, path: Path):
        self._f = open(path, "w", encoding="utf-8")  # noqa: SIM115  # closed by __exit__, like the other sinks

    def write_batch(self, batch: pa.RecordBatch) -> None:
        for row in batch.to_pylist():
            self._f.write(json.dumps(_finite(row), allow_nan=False) + "\n")

    def __enter__(self) -> _JsonLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value
