"""The cache stage's batches: rows encoded in dataloader workers (bad rows reported, never replaced),
moved to the teacher's device, and the teacher's top-k split back into one cache row per sample; and
the rank/world of a data-parallel run. The bench of the cache stage drives the same loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.errors import DataError

if TYPE_CHECKING:
    from pipeline.data import Row
    from pipeline.encoding import RowEncoder


class _EncodeBatch:
    """Dataloader collate: encode rows, collate the good ones, report the bad ones (never replaced)."""

    def __init__(self, encoder: RowEncoder):
        self.encoder = encoder

    def __call__(self, rows: list[Row]) -> dict[str, Any]:
        good, ids, skipped = [], [], []
        for row in rows:
            try:
                enc = self.encoder.encode(row)
            except DataError as exc:
                skipped.append((row.sample_id, exc.reason, str(exc)))
                continue
            good.append(enc.inputs)
            ids.append((row.sample_id, enc.encoding_hash, len(enc.inputs["input_ids"])))
        batch = self.encoder.template.data_collator(good) if good else None
        return {"batch": batch, "ids": ids, "skipped": skipped}


def iterate_batches(
    encoder: RowEncoder, rows: list[Row], batch_size: int, num_workers: int
) -> Iterator[dict[str, Any]]:
    loader: Any = torch.utils.data.DataLoader(
        rows,  # type: ignore[arg-type]  # a list is a map-style dataset
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_EncodeBatch(encoder),
    )
    yield from loader


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def split_samples(topk: Any, ids: list[tuple[str, str, int]]) -> list[Any]:
    """Per-sample ``CachedSample`` rows from a batch's ``TopK`` (row-major, batch_index ascending)."""
    from pipeline.cache.format import CachedSample

    counts = torch.bincount(topk.batch_index, minlength=len(ids)).tolist()
    out, start = [], 0
    for (sid, digest, n_tokens), n in zip(ids, counts, strict=True):
        sl = slice(start, start + n)
        out.append(
            CachedSample(
                sample_id=sid,
                encoding_hash=digest,
                num_tokens=n_tokens,
                positions=topk.positions[sl].numpy().astype(np.int64),
                target_ids=topk.target_ids[sl].numpy().astype(np.int64),
                topk_ids=topk.topk_ids[sl].numpy().astype(np.int64),
                topk_logprobs=topk.topk_logprobs[sl].numpy().astype(np.float32),
                tail_logprobs=topk.tail_logprobs[sl].numpy().astype(np.float32),
                target_logprobs=topk.target_logprobs[sl].numpy().astype(np.float32),
            )
        )
        start += n
    return out
