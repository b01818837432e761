"""The cache stage: run the teacher once over a dataset split and store its top-k distributions.

Rows are encoded by the shared ``RowEncoder`` (the student's template, exactly as training will) in
dataloader workers; the teacher runs forward once per batch; every supervised target's top-k goes to
the cache writer. Bad rows are skipped with a recorded reason (``--strict`` or ``custom.strict`` makes
any skip an error), and rows in = cached + skipped always. Before the teacher loads, a fast pass over
every split (:func:`plan_split`) checks the paths, parses every line and opens every image, so a typo
in the val path or a missing image is reported before any teacher forward; a split with no usable
row is an error naming its file. One writer group per cache directory: :func:`writer_lock`. The stage resumes after a kill: complete shards are kept and
only the samples not yet cached are processed. Under ``torchrun`` each rank caches ``rows[rank::world]``
into its own shards and rank 0 merges one manifest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.data import BadRow, Row, count_reasons, read_rows, require_rows
from pipeline.errors import ConfigError, DataError
from pipeline.models import load_teacher, teacher_device_map
from pipeline.splits import split_file
from pipeline.teacher.written import cache_written_rows, partition_for_written, split_written

if TYPE_CHECKING:
    from pipeline.config import DistillConfig
    from pipeline.encoding import RowEncoder


def source_paths(cfg: DistillConfig, dataset_file: str) -> dict[str, Any]:
    """Where this cache's inputs were: the manifest's ``sources``, outside the fingerprint (a path is
    not content). ``distill inspect`` finds the tokenizer, images and config there while they last."""

    def where(p: str) -> str:
        return os.path.abspath(p) if Path(p).exists() else p  # a hub id stays as it is

    return {
        "tokenizer": where(cfg.model.model),
        "dataset": where(dataset_file),
        "config": [where(f) for f in cfg.source_files],
    }


def dist_info() -> tuple[int, int]:
    """(rank, world_size); initialises a gloo/nccl process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


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


@dataclass
class SplitPlan:
    """What one rank will do with one split, decided before the teacher loads.

    ``rows_in``: this rank's share of the split's rows (after ``limit``); ``usable``: rows that
    passed the fast checks (parsed, images readable, response present); ``unusable``: the others,
    each with its reason, to be recorded as skipped.
    """

    split: str
    path: str
    rows_in: int
    usable: list[Row]
    unusable: list[BadRow]


def plan_split(
    cfg: DistillConfig, split: str, *, strict: bool = False, limit: int | None = None
) -> SplitPlan:
    """Read and check this rank's share of ``split`` (every image opened); raise when the split has no
    usable row (``DataError`` naming the file) or, with ``strict``, at the first unusable row."""
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 (or None for every row), got {limit}")
    path = split_file(cfg, split)
    rank, world = dist_info()
    mine = read_rows(path)[:limit][rank::world]
    usable, unusable = partition_for_written(mine, cfg.custom.written_responses, strict=strict)
    require_rows(path, _sum_over_ranks(len(usable), world), unusable, f"usable rows for the {split} split")
    return SplitPlan(split, path, len(mine), usable, unusable)


def _sum_over_ranks(n: int, world: int) -> int:
    if world == 1:
        return n
    import torch.distributed as dist

    on_gpu = dist.get_backend() == "nccl"
    t = torch.tensor([n], device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if on_gpu else "cpu")
    dist.all_reduce(t)
    return int(t.item())


@contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Hold ``root``'s writer lock for this launch: rank 0 takes it, the other ranks check after a
    barrier that their own rank 0 holds it (``CacheLockedError`` naming the holder otherwise)."""
    from pipeline.cache.lock import CacheLock

    rank, world = dist_info()
    lock = CacheLock(root)
    if rank == 0:
        lock.acquire()
    try:
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
            if rank != 0:
                lock.join()
        yield
    finally:
        lock.release()


def _report_plan(plan: SplitPlan) -> None:
    rank, world = dist_info()
    if rank != 0:
        return
    share = " (rank 0's share)" if world > 1 else ""
    reasons = ", ".join(f"{k}: {v}" for k, v in count_reasons(plan.unusable).items()) or "none"
    print(
        f"[cache {plan.split}] {plan.path}{share}: {plan.rows_in} rows, {len(plan.usable)} usable, "
        f"{len(plan.unusable)} to skip ({reasons})"
    )


def cache_split(
    cfg: DistillConfig,
    split: str,
    teacher: Any,
    encoder: RowEncoder,
    *,
    strict: bool = False,
    limit: int | None = None,
    progress: bool = True,
    shard_bytes: int | None = None,
    plan: SplitPlan | None = None,
    hold_lock: bool = True,
) -> dict[str, Any]:
    """Cache one split into ``<teacher_cache>/<split>``; returns the writer's counts.

    ``plan`` (from :func:`plan_split`) is made here when not given; ``hold_lock=False`` when the
    caller already holds the directory's :func:`writer_lock`.
    """
    root = Path(cfg.custom.teacher_cache or "") / split
    plan = plan or plan_split(cfg, split, strict=strict, limit=limit)
    with writer_lock(root) if hold_lock else nullcontext():
        return _cache_planned(cfg, plan, root, teacher, encoder, strict, progress, shard_bytes)


def _cache_planned(
    cfg: DistillConfig,
    plan: SplitPlan,
    root: Path,
    teacher: Any,
    encoder: RowEncoder,
    strict: bool,
    progress: bool,
    shard_bytes: int | None,
) -> dict[str, Any]:
    from tqdm import tqdm

    from pipeline.cache.manifest import written_counts
    from pipeline.cache.writer import CacheWriter, merge_rank_manifests
    from pipeline.fingerprint import build_fingerprint
    from pipeline.teacher.forward import teacher_topk

    split, path = plan.split, plan.path
    rank, world = dist_info()
    fingerprint = build_fingerprint(cfg, encoder, path)
    device = next(teacher.parameters()).device
    real_vocab = len(encoder.tokenizer)
    kwargs: dict[str, Any] = {}
    if shard_bytes:
        kwargs["shard_bytes"] = shard_bytes
    elif cfg.custom.cache_shard_mb:
        kwargs["shard_bytes"] = int(cfg.custom.cache_shard_mb * 2**20)
    # k larger than the real vocabulary means "everything": the top-k then covers every real id.
    top_k = min(cfg.custom.top_k, real_vocab)
    with CacheWriter(
        root,
        fingerprint=fingerprint,
        top_k=top_k,
        vocab_size=real_vocab,
        logprob_encoding=cfg.custom.logprob_encoding,
        rank=rank,
        world_size=world,
        extra_meta={"sources": source_paths(cfg, path)},
        **kwargs,
    ) as writer:
        done = writer.done_ids()
        for r in plan.unusable:
            if r.sample_id not in done:
                writer.skip(r.sample_id, r.reason, f"{r.source}: {r.detail}")
        todo = [r for r in plan.usable if r.sample_id not in done]
        todo, to_write = split_written(todo, cfg.custom.written_responses)
        bar = tqdm(total=len(todo), desc=f"cache {split}", unit="sample", disable=not progress or rank != 0)
        n_tok, t0 = 0, time.perf_counter()
        for item in iterate_batches(
            encoder, todo, cfg.custom.cache_batch_size, cfg.data.dataloader_num_workers
        ):
            for sid, reason, detail in item["skipped"]:
                if strict:
                    raise DataError(detail)
                writer.skip(sid, reason, detail)
            if item["batch"] is not None:
                topk = teacher_topk(
                    teacher,
                    to_device(item["batch"], device),
                    cfg.custom.top_k,
                    real_vocab,
                    cfg.custom.loss_temperature,
                )
                for sample in split_samples(topk, item["ids"]):
                    writer.add(sample)
                n_tok += int(topk.target_ids.numel())
            bar.update(len(item["ids"]) + len(item["skipped"]))
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(tokens_per_s=f"{n_tok / dt:.0f}")

        def forward(batch: dict[str, Any], ids: list[tuple[str, str, int]]) -> list[Any]:
            t = teacher_topk(
                teacher, to_device(batch, device), top_k, real_vocab, cfg.custom.loss_temperature
            )
            return split_samples(t, ids)

        cache_written_rows(
            cfg,
            teacher,
            encoder,
            to_write,
            writer.add,
            writer.skip,
            forward,
            strict=strict,
            progress=bar.update,
        )
        bar.close()
        counts = writer.finalize(rows_in=plan.rows_in)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank == 0:
            counts = merge_rank_manifests(root)
        dist.barrier()
    if cfg.custom.written_responses != "off":
        # From the manifest's row tags and skips: every session and (after the merge) every rank.
        counts["teacher_written"] = written_counts(counts)
    return counts


def run_caching(
    cfg: DistillConfig,
    split: str = "all",
    strict: bool = False,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``distill cache``: compatibility check, then cache the train (and val) split."""
    from pipeline.encoding import RowEncoder
    from pipeline.teacher.compat import check_pair
    from pipeline.versions import check_versions

    check_versions()
    if not cfg.custom.variant.reads_cache or not cfg.custom.teacher_cache:
        raise ConfigError("distill cache needs custom.trainer_variant: gkd_cached and custom.teacher_cache")
    strict = strict or cfg.custom.strict  # `--strict` and custom.strict mean the same
    splits = ["train", "val"] if split == "all" else [split]
    if split == "all" and not cfg.data.val_dataset:
        splits = ["train"]
    # Every split's path, lines and images before anything slow (teacher load, first forward).
    plans = {s: plan_split(cfg, s, strict=strict, limit=limit) for s in splits}
    for plan in plans.values():
        _report_plan(plan)
    results = {}
    with ExitStack() as locks:
        for s in splits:
            locks.enter_context(writer_lock(Path(cfg.custom.teacher_cache) / s))
        check_pair(cfg)
        teacher = load_teacher(cfg, teacher_device_map())
        encoder = RowEncoder.from_config(cfg)
        if encoder.template.use_model:
            encoder.template.model = teacher  # the template computes rope position ids with the model
        for s in splits:
            results[s] = _cache_and_report(cfg, plans[s], teacher, encoder, strict, progress)
    return results


def _cache_and_report(
    cfg: DistillConfig, plan: SplitPlan, teacher: Any, encoder: RowEncoder, strict: bool, progress: bool
) -> dict[str, Any]:
    counts = cache_split(
        cfg, plan.split, teacher, encoder, strict=strict, progress=progress, plan=plan, hold_lock=False
    )
    rank, _ = dist_info()
    if rank == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in counts.get("skipped_by_reason", {}).items()) or "none"
        print(
            f"[cache {plan.split}] rows in {counts.get('rows_in')}, cached {counts.get('cached')}, "
            f"skipped {counts.get('skipped')} ({reasons})"
        )
        if "teacher_written" in counts:
            w = counts["teacher_written"]
            print(
                f"[cache {plan.split}] teacher-written {w['written']} (re-encoding changed the ids of "
                f"{w['retokenized']}; hit max_new_tokens: kept {w['unfinished_kept']}, "
                f"skipped {w['unfinished_skipped']})"
            )
    return counts
