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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.data import Row, count_reasons, read_split_rows, require_rows
from pipeline.errors import ConfigError, DataError
from pipeline.models import load_teacher, teacher_device_map
from pipeline.splits import split_files
from pipeline.teacher.batches import dist_info, iterate_batches, split_samples, to_device
from pipeline.teacher.interrupt import check as check_sigterm
from pipeline.teacher.interrupt import sigterm_keeps, sigterm_stops_cleanly, sigterm_waits
from pipeline.teacher.plan import SplitPlan
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


def plan_split(
    cfg: DistillConfig, split: str, *, strict: bool = False, limit: int | None = None
) -> SplitPlan:
    """Read and check this rank's share of ``split`` (every image opened); raise when the split has no
    usable row (``DataError`` naming the file) or, with ``strict``, at the first unusable row."""
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 (or None for every row), got {limit}")
    files = split_files(cfg, split)
    path = ", ".join(files)
    rank, world = dist_info()
    rows = read_split_rows(files)[:limit]
    mine = rows[rank::world]
    from pipeline.teacher.incremental import held_unchanged

    held, digests = held_unchanged(Path(cfg.custom.teacher_cache or "") / split, mine)
    usable, unusable = partition_for_written(
        [r for r in mine if r.sample_id not in held], cfg.custom.written_responses, strict=strict
    )
    if held:  # back in file order
        checked = {id(r) for r in usable}
        usable = [r for r in mine if isinstance(r, Row) and (r.sample_id in held or id(r) in checked)]
    require_rows(path, _sum_over_ranks(len(usable), world), unusable, f"usable rows for the {split} split")
    ids = frozenset(r.sample_id for r in rows)
    return SplitPlan(split, path, len(mine), usable, unusable, files, digests, limit, ids)


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
    from pipeline.cache.compact import finish_compaction
    from pipeline.cache.lock import CacheLock

    rank, world = dist_info()
    lock = CacheLock(root)
    if rank == 0:
        lock.acquire()
        finish_compaction(root)  # a compaction stopped mid-swap leaves the cache beside its place
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
    """Cache one split into ``<teacher_cache>/<split>``; returns the manifest's counts.

    Only the rows the cache does not hold with their current content are forwarded
    (:mod:`pipeline.teacher.incremental`). ``plan`` (from :func:`plan_split`) is made here when not
    given; ``hold_lock=False`` when the caller already holds the directory's :func:`writer_lock`.
    """
    root = Path(cfg.custom.teacher_cache or "") / split
    plan = plan or plan_split(cfg, split, strict=strict, limit=limit)
    from pipeline.cache.diskfull import disk_full_as_error

    if (held := _holds_more_than_the_limit(plan, root)) is not None:
        return held
    with writer_lock(root) if hold_lock else nullcontext(), disk_full_as_error(root), sigterm_keeps(root):
        return _cache_planned(
            cfg, plan, root, teacher, encoder, strict=strict, progress=progress, shard_bytes=shard_bytes
        )


def _holds_more_than_the_limit(plan: SplitPlan, root: Path) -> dict[str, Any] | None:
    """A finished cache with more rows than ``--limit`` asks for: left as it is (its counts returned,
    and said), since a limit only ever means "at most the first N rows" of a cache still to be built."""
    from pipeline.cache.format import MANIFEST_NAME
    from pipeline.cache.manifest import read_json

    if plan.limit is None or not root.is_dir():
        return None
    if not (root / MANIFEST_NAME).is_file():
        return _unfinished_beyond_the_limit(plan, root)
    counts = dict(read_json(root / MANIFEST_NAME).get("counts") or {})
    held = int(counts.get("cached", 0)) + int(counts.get("skipped", 0))
    rows = _sum_over_ranks(plan.rows_in, dist_info()[1])
    if held <= rows:
        return _unfinished_beyond_the_limit(plan, root)
    if dist_info()[0] == 0:
        print(
            f"[cache {plan.split}] {root} already holds {held} rows ({counts.get('cached')} cached, "
            f"{counts.get('skipped')} skipped), more than --limit {plan.limit} asks for: left as it is"
        )
    return counts


def _unfinished_beyond_the_limit(plan: SplitPlan, root: Path) -> dict[str, Any] | None:
    """An unfinished run (killed, stopped) that already cached rows past what ``--limit`` asks for:
    finishing it under the limit could not reconcile its counts, so it is left as it is, and said."""
    from pipeline.cache.live import scan

    state = scan(root)  # read without the lock, as planning does; nothing is written here
    cached = [s for s, r in state.rows.items() if state.shard_generation[r.shard] == state.generation]
    skipped = [s for s, rec in state.skips.items() if rec["generation"] == state.generation]
    beyond = [s for s in cached + skipped if s not in plan.all_ids]
    if not beyond:
        return None
    if dist_info()[0] == 0:
        print(
            f"[cache {plan.split}] {root} holds an unfinished run's {len(cached) + len(skipped)} rows "
            f"({len(cached)} cached, {len(skipped)} skipped), {len(beyond)} of them past --limit "
            f"{plan.limit}: left as it is; run the same command without --limit to finish it"
        )
    return {"cached": len(cached), "skipped": len(skipped), "rows_in": None, "unfinished": True}


def _open_writer(
    cfg: DistillConfig, plan: SplitPlan, root: Path, encoder: RowEncoder, shard_bytes: int | None
) -> Any:
    from pipeline.cache.writer import CacheWriter
    from pipeline.fingerprint import build_fingerprint, effective_top_k

    rank, world = dist_info()
    kwargs: dict[str, Any] = {}
    if shard_bytes:
        kwargs["shard_bytes"] = shard_bytes
    elif cfg.custom.cache_shard_mb:
        kwargs["shard_bytes"] = int(cfg.custom.cache_shard_mb * 2**20)
    real_vocab = len(encoder.tokenizer)
    return CacheWriter(
        root,
        fingerprint=build_fingerprint(cfg, encoder),
        top_k=effective_top_k(cfg, encoder),
        vocab_size=real_vocab,
        logprob_encoding=cfg.custom.logprob_encoding,
        rank=rank,
        world_size=world,
        extra_meta={"sources": source_paths(cfg, plan.files[0])},
        **kwargs,
    )


def _cache_planned(
    cfg: DistillConfig,
    plan: SplitPlan,
    root: Path,
    teacher: Any,
    encoder: RowEncoder,
    *,
    strict: bool,
    progress: bool,
    shard_bytes: int | None,
) -> dict[str, Any]:
    from tqdm import tqdm

    from pipeline.fingerprint import dataset_record
    from pipeline.teacher.incremental import encoding_hash_of, key_rows, record_before_forward

    rank, _ = dist_info()
    with _open_writer(cfg, plan, root, encoder, shard_bytes) as writer:
        keyed = key_rows(plan, writer.state, encoding_hash_of(encoder))
        record_before_forward(writer, keyed, strict=strict)
        todo, to_write = split_written(keyed.todo, cfg.custom.written_responses)
        forward = _teacher_forward(cfg, teacher, encoder, keyed.digests)
        bar = tqdm(
            total=len(keyed.todo),
            desc=f"cache {plan.split}",
            unit="sample",
            disable=not progress or rank != 0,
        )

        # A skip carries its row's digest: a later generation keeps it while the row is unchanged,
        # instead of encoding (or, for a teacher-written row, generating) the row again.
        def skip(sid: str, reason: str, detail: str) -> None:
            writer.skip(sid, reason, detail, keyed.digests.get(sid, ""))

        def advance(n: int) -> None:
            bar.update(n)
            check_sigterm()  # a SIGTERM stops here, between written rows

        try:
            _cache_labelled(cfg, encoder, todo, writer.add, skip, forward, bar, strict=strict)
            cache_written_rows(
                cfg,
                teacher,
                encoder,
                to_write,
                writer.add,
                skip,
                forward,
                strict=strict,
                progress=advance,
            )
        finally:
            bar.close()  # ends the bar's line, so an error (a full disk, a SIGTERM) prints on its own
        record = dataset_record(plan.files, plan.rows_in)
        writer.finalize(rows_in=plan.rows_in, reused=keyed.reused, dataset=record)
    return _merged_counts(cfg, root)


def _teacher_forward(cfg: DistillConfig, teacher: Any, encoder: RowEncoder, digests: dict[str, str]) -> Any:
    """THE teacher forward of the cache stage, for dataset rows and teacher-written rows alike:
    a collated batch and its ``(sample_id, encoding_hash, n_tokens)`` -> one ``CachedSample`` per row,
    each carrying its dataset row's digest (what a later generation compares)."""
    from dataclasses import replace

    from pipeline.fingerprint import effective_top_k
    from pipeline.teacher.forward import teacher_topk

    device = next(teacher.parameters()).device
    real_vocab = len(encoder.tokenizer)
    top_k = effective_top_k(cfg, encoder)

    def forward(batch: dict[str, Any], ids: list[tuple[str, str, int]]) -> list[Any]:
        topk = teacher_topk(teacher, to_device(batch, device), top_k, real_vocab, cfg.custom.loss_temperature)
        return [replace(s, row_digest=digests[s.sample_id]) for s in split_samples(topk, ids)]

    return forward


def _cache_labelled(
    cfg: DistillConfig,
    encoder: RowEncoder,
    rows: list[Row],
    add: Any,
    skip: Any,
    forward: Any,
    bar: Any,
    *,
    strict: bool,
) -> None:
    """Encode ``rows`` in dataloader workers, forward every batch, add each sample or skip the row."""
    n_tok, t0 = 0, time.perf_counter()
    for item in iterate_batches(encoder, rows, cfg.custom.cache_batch_size, cfg.data.dataloader_num_workers):
        for sid, reason, detail in item["skipped"]:
            if strict:
                raise DataError(detail)
            skip(sid, reason, detail)
        if item["batch"] is not None:
            for sample in forward(item["batch"], item["ids"]):
                add(sample)
                n_tok += sample.num_targets
        bar.update(len(item["ids"]) + len(item["skipped"]))
        bar.set_postfix(tokens_per_s=f"{n_tok / max(time.perf_counter() - t0, 1e-9):.0f}")
        check_sigterm()  # a SIGTERM stops here, between batches: the writer then seals what it holds


def _merged_counts(cfg: DistillConfig, root: Path) -> dict[str, Any]:
    """The manifest's counts once every rank finished (rank 0 merges under torchrun), with the last
    generation's record under ``generation`` and teacher-written counts when that mode is on."""
    from pipeline.cache.format import MANIFEST_NAME
    from pipeline.cache.manifest import read_json, written_counts
    from pipeline.cache.merge import merge_rank_manifests

    rank, world = dist_info()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank == 0:
            merge_rank_manifests(root)
        dist.barrier()
    manifest = read_json(root / MANIFEST_NAME)
    counts = dict(manifest["counts"]) | {"generation": manifest["generations"][-1]}
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
    compact: bool = False,
) -> dict[str, Any]:
    """``distill cache``: compatibility check, then cache the train (and val) split: only the rows the
    cache does not hold with their current content. ``compact`` (``--compact``) then rewrites each
    split's cache without superseded rows and rows the dataset no longer has."""
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
    from pipeline.fingerprint import teacher_path

    teacher_path(cfg)  # a missing local teacher is a ConfigError now, not after planning or a hub retry
    # Every split's path, lines and images before anything slow (teacher load, first forward).
    plans = {s: plan_split(cfg, s, strict=strict, limit=limit) for s in splits}
    for plan in plans.values():
        _report_plan(plan)
    results = {}
    with sigterm_stops_cleanly(), ExitStack() as locks:
        for s in splits:
            locks.enter_context(writer_lock(Path(cfg.custom.teacher_cache) / s))
        check_pair(cfg)
        teacher = load_teacher(cfg, teacher_device_map())
        encoder = RowEncoder.from_config(cfg)
        if encoder.template.use_model:
            encoder.template.model = teacher  # the template computes rope position ids with the model
        for s in splits:
            results[s] = _cache_and_report(cfg, plans[s], teacher, encoder, strict, progress)
            if compact and not results[s].get("unfinished"):
                with sigterm_waits():  # a compaction finishes (or never starts its swap) first
                    results[s] = compact_split(cfg, s, limit)
    return results


def _cache_and_report(
    cfg: DistillConfig, plan: SplitPlan, teacher: Any, encoder: RowEncoder, strict: bool, progress: bool
) -> dict[str, Any]:
    counts = cache_split(
        cfg, plan.split, teacher, encoder, strict=strict, progress=progress, plan=plan, hold_lock=False
    )
    rank, _ = dist_info()
    if rank == 0 and not counts.get("unfinished"):
        from pipeline.cache.format import MANIFEST_NAME
        from pipeline.cache.manifest import read_json
        from pipeline.teacher.incremental import generation_line

        root = Path(cfg.custom.teacher_cache or "") / plan.split
        reasons = ", ".join(f"{k}: {v}" for k, v in counts.get("skipped_by_reason", {}).items()) or "none"
        print(f"[cache {plan.split}] {generation_line(read_json(root / MANIFEST_NAME))}")
        print(
            f"[cache {plan.split}] the cache holds {counts.get('cached')} rows, "
            f"{counts.get('skipped')} skipped ({reasons})"
        )
        if "teacher_written" in counts:
            w = counts["teacher_written"]
            print(
                f"[cache {plan.split}] teacher-written {w['written']} (re-encoding changed the ids of "
                f"{w['retokenized']}; hit max_new_tokens: kept {w['unfinished_kept']}, "
                f"skipped {w['unfinished_skipped']})"
            )
    return counts


def compact_split(cfg: DistillConfig, split: str, limit: int | None) -> dict[str, Any]:
    """Rewrite ``split``'s cache holding only the rows of its dataset (rank 0; the others wait).
    The caller holds the writer lock and has just cached the split, so nothing kept is stale."""
    from pipeline.cache.compact import compact
    from pipeline.cache.format import MANIFEST_NAME
    from pipeline.cache.manifest import read_json
    from pipeline.data import read_split_rows

    root = Path(cfg.custom.teacher_cache or "") / split
    rank, world = dist_info()
    if rank == 0:
        before = read_json(root / MANIFEST_NAME)
        keep = {r.sample_id for r in read_split_rows(split_files(cfg, split))[:limit]}
        shard_bytes = int(cfg.custom.cache_shard_mb * 2**20) if cfg.custom.cache_shard_mb else None
        counts = compact(root, keep, shard_bytes=shard_bytes)
        dropped = (
            before["counts"]["cached"] + before["counts"]["skipped"] - counts["cached"] - counts["skipped"]
        )
        stored = before.get("storage", {}).get("superseded", 0)
        print(
            f"[cache {split}] compacted: kept {counts['cached']} rows and {counts['skipped']} skips, "
            f"dropped {dropped} rows the dataset does not have and {stored} superseded versions"
        )
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return _merged_counts(cfg, root) if rank == 0 else {}
