"""Plain copies of a cache for tools that do not speak its codec (``distill inspect --export``).

The shards store id-sorted delta planes and quantised levels; this writes the decoded values as plain
list columns, as Parquet or as an Arrow IPC stream (what ``datasets.Dataset.from_file`` reads).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.cache.reader import CacheReader
from pipeline.errors import ConfigError

# Suffix -> what is written. CSV cannot hold the per-target list columns, so it is refused, never
# written as something else under its name.
EXPORT_FORMATS = {".parquet": "Parquet", ".arrow": "Arrow IPC stream", ".jsonl": "JSON Lines"}


def export_format(out_path: str | Path) -> str:
    """The format ``out_path``'s suffix asks for; ``ConfigError`` naming the path for an unknown
    suffix or a directory that does not exist (checked before anything is read or written)."""
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
    return fmt


def export_plain(cache_root: str | Path, out_path: str | Path) -> dict[str, int]:
    """Write a plain copy of a cache (decoded values) with list columns: ``.parquet`` Parquet, ``.arrow``
    an Arrow IPC *stream* (``pa.ipc.open_stream``; what ``datasets.Dataset.from_file`` reads), ``.jsonl``
    one JSON object per sample (``-inf`` logprobs as ``null``); any other suffix is a ``ConfigError``.

    One row per sample: ``sample_id``, ``encoding_hash``, ``num_tokens`` and per-target lists ``positions``,
    ``target_ids``, ``target_logprobs``, ``tail_logprobs``, ``topk_ids`` (list of fixed-size lists of k
    int32), ``topk_logprobs`` (same, float32). Returns ``{"rows", "targets"}``.
    """
    fmt = export_format(out_path)
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
    out_path = Path(out_path)
    rows = targets = 0
    if fmt == "Parquet":
        import pyarrow.parquet as pq

        sink: Any = pq.ParquetWriter(str(out_path), schema, compression="zstd")
    elif fmt == "JSON Lines":
        sink = _JsonLines(out_path)
    else:
        sink = pa.ipc.new_stream(
            str(out_path), schema, options=pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd"))
        )
    with sink:
        for block, d, positions in reader.iter_blocks():
            offsets = pa.array(np.concatenate([[0], np.cumsum(block.num_targets)]).astype(np.int32))

            def lst(values: np.ndarray, offsets: pa.Array = offsets) -> pa.Array:
                return pa.ListArray.from_arrays(offsets, pa.array(values))

            def fixed(values: np.ndarray, offsets: pa.Array = offsets) -> pa.Array:
                inner = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), k)
                return pa.ListArray.from_arrays(offsets, inner)

            batch = pa.RecordBatch.from_arrays(
                [
                    pa.array(block.sample_ids, pa.string()),
                    pa.array(block.hashes, pa.string()),
                    pa.array(block.num_tokens, pa.int32()),
                    lst(positions.astype(np.int32)),
                    lst(d.target_ids.astype(np.int32)),
                    lst(d.target_logprobs),
                    lst(d.tail_logprobs),
                    fixed(d.topk_ids.astype(np.int32)),
                    fixed(d.topk_logprobs),
                ],
                schema=schema,
            )
            sink.write_batch(batch)
            rows += batch.num_rows
            targets += len(d.target_ids)
    return {"rows": rows, "targets": targets}


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
