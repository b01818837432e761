"""On-policy batches through the cache (``custom.onpolicy_cache``): ``lmbda`` without a live teacher.

A step drawn on-policy (probability ``rlhf.lmbda``, the same seeded draw as live on-policy) takes its
batch from a cache split that ``distill cache`` built with ``custom.written_by`` a student checkpoint
(:mod:`pipeline.teacher.rounds`): the student's own responses, with the teacher's top-k along their
tokens. The teacher is never loaded in the training process; as on live on-policy batches, CE is not
applied to these rows. Dataset steps keep their own cache (``custom.teacher_cache``).

The cache must be for this run's teacher, tokenizer, template, k and loss temperature: its
fingerprint is checked as the dataset cache's is, except for the writer's generation settings
(``written_responses``), which are the round's, not this run's. Only rows a student wrote are drawn
(rows the dataset labelled, cached beside them, are not on-policy); each is encoded with its cached
response and checked against its cache row's encoding hash, as every cached row is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.errors import CacheMismatchError, DataError

if TYPE_CHECKING:
    from pipeline.cache.reader import CacheReader
    from pipeline.config import DistillConfig
    from pipeline.encoding import RowEncoder
    from pipeline.train.data import EncodedDataset


def open_onpolicy_cache(cfg: DistillConfig, encoder: RowEncoder) -> CacheReader:
    """``custom.onpolicy_cache`` opened under the fingerprint policy (its writer settings accepted as
    recorded); ``CacheMismatchError`` when it is missing or no student wrote it."""
    from pipeline.cache.cachedir import SplitDir
    from pipeline.cache.policy import CachePolicy, open_cache_dir
    from pipeline.fingerprint import build_fingerprint
    from pipeline.splits import accept_recorded_top_k

    root = Path(str(cfg.custom.onpolicy_cache))
    where = SplitDir(root)
    if not where.finished:
        raise CacheMismatchError(
            f"{root}: custom.onpolicy_cache: no finished cache split here (run `distill cache` with "
            "custom.written_by set to the student checkpoint, then point this key at <teacher_cache>/train)"
        )
    manifest = where.manifest()
    writer = (manifest.last_generation.get("dataset") or {}).get("written_by")
    recorded = manifest.fingerprint.get("written_responses")
    if not writer or not recorded:
        raise CacheMismatchError(
            f"{root}: custom.onpolicy_cache: its last generation's responses were not written by a student "
            "(custom.written_by): on-policy batches need a student-written cache"
        )
    expected = build_fingerprint(cfg, encoder) | {"written_responses": recorded}
    expected = accept_recorded_top_k(expected, manifest)
    return open_cache_dir(
        root,
        CachePolicy.FINGERPRINT,
        expected_fingerprint=expected,
        loss_temperature=cfg.custom.loss_temperature,
    )


def onpolicy_dataset(cfg: DistillConfig, encoder: RowEncoder, reader: CacheReader) -> EncodedDataset:
    """The student-written rows of ``custom.onpolicy_dataset`` bound to ``reader`` (dataset order)."""
    from pipeline.cache.export import live_samples
    from pipeline.data import Row, read_rows
    from pipeline.train.data import EncodedDataset

    path = str(cfg.custom.onpolicy_dataset)
    written = {s.sample_id for s in live_samples(reader) if s.teacher_written}
    rows = [r for r in read_rows(path) if isinstance(r, Row) and r.sample_id in written]
    if not rows:
        raise DataError(
            f"{path}: custom.onpolicy_dataset: none of its rows is student-written in "
            f"{cfg.custom.onpolicy_cache} ({len(written)} written rows there): is this the file the round "
            "was cached for?"
        )
    return EncodedDataset(rows, encoder, reader)


class OnPolicyBatches:
    """An endless, seeded stream of collated on-policy batches from a student-written cache.

    ``next(device)``: the next batch (the template collator's dict plus the cached teacher's targets
    under ``TEACHER_KEY``), its tensors on ``device``. Each pass over the rows is a fresh seeded
    shuffle (``seed`` plus the rank, so data-parallel ranks draw different rows).
    """

    def __init__(self, dataset: EncodedDataset, collator: Any, batch_size: int, seed: int, rank: int = 0):
        self.dataset = dataset
        self.collator = collator
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed + 1009 * rank)
        self._it: Iterator[dict[str, Any]] = iter(())

    def __len__(self) -> int:
        return len(self.dataset)

    def _loader(self) -> Iterator[dict[str, Any]]:
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            generator=self.generator,
            collate_fn=self.collator,
        )
        return iter(loader)

    def next(self, device: torch.device | str) -> dict[str, Any]:
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = self._loader()
            batch = next(self._it)
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
