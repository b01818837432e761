"""Training datasets: strict encoding in dataloader workers, with the cached teacher attached.

Each item is encoded by the shared ``RowEncoder`` (the same function the cache stage used) and,
for the cached variant, paired with its ``CachedSample``. The encoding hash of every item is
compared with the cache's; a mismatch names the sample and the first differing field. Reading the
cache and encoding both happen in dataloader workers, off the training step's critical path.

Encoding (template, image loading and resizing, image hashing) costs more than a tiny student's step:
on the demo a row was encoded ~4.6 times in 300 steps and re-encoding took about a third of a student
run. The encoding is a pure function of the row, so each dataset keeps the encodings it made, up to a
byte budget (``custom.encoded_cache_mb``, one :class:`MemoBudget` per process, shared by the train and
val datasets); past the budget it keeps what it holds and encodes the rest on every access: under
shuffled epochs that keeps a budget/size share of hits, where an LRU over a dataset larger than its
budget would keep none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from pipeline.binding import as_cached, require_cached_encoding
from pipeline.cache.targets import collate_targets
from pipeline.data import Row
from pipeline.encoding import IGNORE_INDEX, EncodedRow, RowEncoder

TEACHER_KEY = "teacher"  # collated cached-teacher tensors
ROWS_KEY = "rows"  # raw rows (for on-policy generation)
IDS_KEY = "sample_ids"


class EncodedDataset(torch.utils.data.Dataset):
    """Rows encoded on access; optional cached teacher per row (verified by encoding hash).

    Every row must be in ``cache`` unless ``partial_cache`` (evaluation: the rows the cache lacks are
    scored without a teacher). ``encoded``: the rows' encodings when the caller already has them
    (evaluation encodes first, to count the rows that do not encode); they are used as given, so a
    teacher-written cache row is not substituted and must match them like any other.
    ``memo_budget``: the byte budget this dataset's kept encodings draw on, shared with the process's
    other datasets (None: encode on every access); the kept ones are still checked against the cache
    row on every access.
    """

    def __init__(
        self,
        rows: Sequence[Row],
        encoder: RowEncoder,
        cache: Any = None,
        keep_rows: bool = False,
        *,
        partial_cache: bool = False,
        encoded: Sequence[EncodedRow] | None = None,
        memo_budget: MemoBudget | None = None,
    ):
        self.rows = list(rows)
        self.encoder = encoder
        self.cache = cache
        self.keep_rows = keep_rows
        self.encoded = None if encoded is None else list(encoded)
        self.cached_ids = set(cache.sample_ids) if cache is not None and partial_cache else None
        self.memo_budget = memo_budget
        self.memo: dict[int, tuple[Row, EncodedRow]] = {}
        self.encodes = 0  # encoder calls made here (the memo's test reads it)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        cached = None
        if self.cache is not None and (self.cached_ids is None or row.sample_id in self.cached_ids):
            cached = self.cache.get(row.sample_id)
        if self.encoded is not None:
            enc = self.encoded[i]
        elif i in self.memo:
            row, enc = self.memo[i]
        else:
            if cached is not None:
                row = as_cached(row, cached)
            enc = self.encoder.encode(row)
            self.encodes += 1
            self._remember(i, row, enc)
        item = dict(enc.inputs)
        item[IDS_KEY] = row.sample_id
        if cached is not None:
            require_cached_encoding(row, enc, cached)
            item[TEACHER_KEY] = cached
        if self.keep_rows:
            item[ROWS_KEY] = row
        return item

    def _remember(self, i: int, row: Row, enc: EncodedRow) -> None:
        if self.memo_budget is not None and self.memo_budget.take(encoding_bytes(enc)):
            self.memo[i] = (row, enc)


class MemoBudget:
    """A byte budget for kept encodings that the datasets of one process draw on together.

    A dataloader worker gets a copy of its dataset, budget included, so the bound holds per process.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes if they fit; False (nothing reserved) if they do not."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True


def encoding_bytes(enc: EncodedRow) -> int:
    """About what an encoding holds in memory: its arrays' bytes, 32 per element of a Python list."""
    total = 0
    for v in enc.inputs.values():
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, np.ndarray):
            total += v.nbytes
        elif isinstance(v, (list, tuple)):
            total += 32 * len(v)
    return total


class DistillCollator:
    """Wraps the template's collator: pops our extra fields, collates them separately.

    The cached teacher's targets (``pipeline.cache.targets.collate_targets``) are attached when every
    row of the batch has a cache row, or, with ``placeholders`` (evaluation, which also scores rows the
    cache lacks), when any row has one.
    """

    def __init__(
        self, template_collator: Callable[[list[dict[str, Any]]], dict[str, Any]], placeholders: bool = False
    ):
        self.template_collator = template_collator
        self.placeholders = placeholders

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        batch = [dict(b) for b in batch]
        teachers = [b.pop(TEACHER_KEY, None) for b in batch]
        rows = [b.pop(ROWS_KEY, None) for b in batch]
        ids = [b.pop(IDS_KEY, None) for b in batch]
        out = self.template_collator(batch)
        if teachers and all(t is not None for t in teachers):
            out[TEACHER_KEY] = collate_targets(teachers)
        elif self.placeholders and any(t is not None for t in teachers):
            counts = (out["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1).tolist()
            out[TEACHER_KEY] = collate_targets(teachers, counts)
        if any(r is not None for r in rows):
            out[ROWS_KEY] = rows
        out[IDS_KEY] = ids
        return out
