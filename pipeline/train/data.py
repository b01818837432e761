"""Training datasets: strict encoding in dataloader workers, with the cached teacher attached.

Each item is encoded by the shared ``RowEncoder`` (the same function the cache stage used) and,
for the cached variant, paired with its ``CachedSample``. The encoding hash of every item is
compared with the cache's; a mismatch names the sample and the first differing field. Reading the
cache and encoding both happen in dataloader workers, off the training step's critical path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from pipeline.binding import as_cached, require_cached_encoding
from pipeline.data import Row
from pipeline.encoding import RowEncoder

TEACHER_KEY = "teacher"  # collated cached-teacher tensors
ROWS_KEY = "rows"  # raw rows (for on-policy generation)
IDS_KEY = "sample_ids"


class EncodedDataset(torch.utils.data.Dataset):
    """Rows encoded on access; optional cached teacher per row (verified by encoding hash)."""

    def __init__(self, rows: Sequence[Row], encoder: RowEncoder, cache: Any = None, keep_rows: bool = False):
        self.rows = list(rows)
        self.encoder = encoder
        self.cache = cache
        self.keep_rows = keep_rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        cached = self.cache.get(row.sample_id) if self.cache is not None else None
        if cached is not None:
            row = as_cached(row, cached)
        enc = self.encoder.encode(row)
        item = dict(enc.inputs)
        item[IDS_KEY] = row.sample_id
        if cached is not None:
            require_cached_encoding(row, enc, cached)
            item[TEACHER_KEY] = cached
        if self.keep_rows:
            item[ROWS_KEY] = row
        return item


def collate_cached(samples: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Concatenate cached samples in batch order (row-major, as the loss sees the targets).

    topk_ids int64 [N, k]; topk_logprobs, tail_logprobs, target_logprobs float32; target_ids int64 [N];
    num_targets int64 [B].
    """

    def cat(name: str, dtype: Any) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([getattr(s, name) for s in samples]).astype(dtype, copy=False))

    return {
        "topk_ids": cat("topk_ids", np.int64),
        "topk_logprobs": cat("topk_logprobs", np.float32),
        "tail_logprobs": cat("tail_logprobs", np.float32),
        "target_logprobs": cat("target_logprobs", np.float32),
        "target_ids": cat("target_ids", np.int64),
        "num_targets": torch.tensor([len(s.target_ids) for s in samples], dtype=torch.int64),
    }


class DistillCollator:
    """Wraps the template's collator: pops our extra fields, collates them separately."""

    def __init__(self, template_collator: Callable[[list[dict[str, Any]]], dict[str, Any]]):
        self.template_collator = template_collator

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        batch = [dict(b) for b in batch]
        teachers = [b.pop(TEACHER_KEY, None) for b in batch]
        rows = [b.pop(ROWS_KEY, None) for b in batch]
        ids = [b.pop(IDS_KEY, None) for b in batch]
        out = self.template_collator(batch)
        if all(t is not None for t in teachers) and teachers:
            out[TEACHER_KEY] = collate_cached(teachers)
        if any(r is not None for r in rows):
            out[ROWS_KEY] = rows
        out[IDS_KEY] = ids
        return out
