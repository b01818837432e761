"""On-policy rounds through the cache: a student checkpoint writes the responses, the teacher scores.

With ``custom.written_by`` naming a student checkpoint directory, ``distill cache`` writes the
responses of ``custom.written_responses``' rows with the STUDENT instead of the teacher: the student
is loaded (trust checked like every load, :func:`pipeline.models.load_trained`), writes the responses
of every row the cache still needs (seeded per chunk, at ``written_temperature`` /
``written_max_new_tokens``), and is released before the teacher loads; the teacher then scores each
written response along its re-encoded tokens (``pipeline.teacher.written``), exactly as for
teacher-written rows. The two models are never resident together.

Which rows: keyed as the cache writer will key them (:func:`pipeline.teacher.incremental.preview`),
each written row's key mixing in the writer's checkpoint digests and ``custom.written_round``
(:func:`pipeline.fingerprint.writer_key`): another writer or round re-writes the rows as a new
generation, an unchanged one forwards nothing, and a resumed run writes only what it lacks. The
writer is recorded with each generation (the manifest's ``generations[-1].dataset.written_by``).
Training reads such a cache with ``custom.onpolicy_cache`` (:mod:`pipeline.train.onpolicy_cache`).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.data import Row
from pipeline.logs import bars_hidden
from pipeline.teacher.written import chunks, generate_chunk, sampling_settings, split_written

if TYPE_CHECKING:
    from pipeline.cache.cachedir import CacheDir
    from pipeline.config import DistillConfig
    from pipeline.encoding import RowEncoder
    from pipeline.generation import Completion
    from pipeline.teacher.plan import SplitPlan

log = logging.getLogger(__name__)

Completions = dict[str, "Completion"]  # by sample_id


def written_key(cfg: DistillConfig) -> tuple[str, str | None] | None:
    """``(custom.written_responses, writer key)`` for :func:`~pipeline.teacher.incremental.key_rows`
    when a student writes; ``None`` when the teacher writes (plain row digests, as before)."""
    from pipeline.fingerprint import writer_key, writer_record

    record = writer_record(cfg)
    return None if record is None else (cfg.custom.written_responses, writer_key(record))


def writer_generation_record(cfg: DistillConfig) -> dict[str, Any] | None:
    """What a generation records about its student writer: digests, round and the checkpoint's path
    (a record for people and the inspector, never compared; the key holds no path)."""
    from pipeline.fingerprint import student_writer, writer_record

    record = writer_record(cfg)
    return None if record is None else {**record, "checkpoint": student_writer(cfg)}


def rows_to_write(cfg: DistillConfig, plan: SplitPlan, cache: CacheDir, encoder: RowEncoder) -> list[Row]:
    """The rows of ``plan`` that the student writes in this generation (none already done)."""
    from pipeline.teacher.incremental import preview

    keyed = preview(plan, cache.split(plan.split).root, encoder, written_key(cfg))
    return split_written(keyed.todo, cfg.custom.written_responses)[1]


def student_completions(
    cfg: DistillConfig, encoder: RowEncoder, rows: Mapping[str, Sequence[Row]], progress: bool = True
) -> dict[str, Completions]:
    """Load the student writer, write every row of ``rows`` (by split), release it.

    Chunks and seeds are the cache stage's (:func:`~pipeline.teacher.written.chunks` of
    ``custom.cache_batch_size``, each seeded by its first sample id), so writing here or inside the
    stage gives the same responses. Nothing to write: the student is not loaded.
    """
    from tqdm import tqdm

    from pipeline.fingerprint import student_writer
    from pipeline.models import load_trained

    out: dict[str, Completions] = {s: {} for s in rows}
    total = sum(len(r) for r in rows.values())
    where = student_writer(cfg)
    if where is None or total == 0:
        return out
    bs = cfg.custom.cache_batch_size
    settings = sampling_settings(cfg, bs)
    model = load_trained(cfg, where)[0]  # its own encoder is dropped: it would keep the model alive
    before = encoder.template.model if encoder.template.use_model else None
    if encoder.template.use_model:
        encoder.template.model = model  # the template computes rope position ids with the model
    disable = not progress or bars_hidden()
    try:
        with tqdm(total=total, desc="student writes", unit="row", disable=disable) as bar:
            for split, split_rows in rows.items():
                for chunk in chunks(split_rows, bs):
                    for row, c in zip(chunk, generate_chunk(model, encoder, chunk, settings), strict=True):
                        out[split][row.sample_id] = c
                    bar.update(len(chunk))
    finally:
        if encoder.template.use_model:
            encoder.template.model = before
        del model
        _release_memory()
    log.info(
        "[cache] the student %s wrote %d responses; released before the teacher scores them", where, total
    )
    return out


def write_round(
    cfg: DistillConfig,
    encoder: RowEncoder,
    plans: Mapping[str, SplitPlan],
    cache: CacheDir,
    progress: bool = True,
) -> dict[str, Completions] | None:
    """Every split's student-written responses, before the teacher loads; ``None`` when the teacher
    writes (``custom.written_by: teacher``)."""
    if written_key(cfg) is None:
        return None
    todo = {s: rows_to_write(cfg, plan, cache, encoder) for s, plan in plans.items()}
    return student_completions(cfg, encoder, todo, progress)


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
