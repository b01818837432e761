"""The cache stage: run the teacher once over a dataset split and store its top-k distributions.

Rows are encoded by the shared ``RowEncoder`` (the student's template, exactly as training will) in
dataloader workers; the teacher runs forward once per batch; every supervised target's top-k goes to
the cache writer. Bad rows are skipped with a recorded reason (``--strict`` or ``custom.strict`` makes
any skip an error), and rows in = cached + skipped always. Before the teacher loads, a fast pass over
every split (:func:`pipeline.teacher.incremental.plan_split`) checks the paths, parses every line and
opens every image, so a typo in the val path or a missing image is reported before any teacher
forward; a split with no usable row is an error naming its file. One writer group per cache
directory: :func:`writer_lock`. The stage resumes after a kill: complete shards are kept and only the
samples not yet cached are processed. Under ``torchrun`` each rank caches ``rows[rank::world]`` into
its own shards and rank 0 merges one manifest.

With ``custom.written_by`` a student checkpoint, the student writes every split's responses and is
released before the teacher loads (:mod:`pipeline.teacher.rounds`).

Each split is one :class:`SplitJob`: its plan, its directory (:class:`~pipeline.cache.cachedir.SplitDir`),
the teacher and the encoder, walked ``run`` (forward and write) then ``report``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.cache.cachedir import CacheDir, SplitDir
from pipeline.data import Row, count_reasons
from pipeline.dist import barrier, is_main, rank_world, sum_over_ranks
from pipeline.errors import ConfigError, DataError
from pipeline.logs import bars_hidden
from pipeline.models import load_teacher, teacher_device_map
from pipeline.teacher.batches import iterate_batches, split_samples, to_device
from pipeline.teacher.incremental import plan_split
from pipeline.teacher.interrupt import check as check_sigterm
from pipeline.teacher.interrupt import sigterm_keeps, sigterm_stops_cleanly, sigterm_waits
from pipeline.teacher.plan import SplitPlan
from pipeline.teacher.written import cache_written_rows, split_written

if TYPE_CHECKING:
    from pipeline.cache.writer import CacheWriter
    from pipeline.config import DistillConfig
    from pipeline.encoding import RowEncoder

__all__ = [
    "SplitJob",
    "cache_split",
    "compact_split",
    "plan_split",
    "report_plan",
    "run_caching",
    "writer_lock",
]

log = logging.getLogger(__name__)

Forward = Callable[[dict[str, Any], list[tuple[str, str, int]]], list[Any]]


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


@contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Hold ``root``'s writer lock for this launch: rank 0 takes it, the other ranks check after a
    barrier that their own rank 0 holds it (``CacheLockedError`` naming the holder otherwise)."""
    from pipeline.cache.compact import finish_compaction
    from pipeline.cache.lock import CacheLock

    lock = CacheLock(root)
    if is_main():
        lock.acquire()
        finish_compaction(root)  # a compaction stopped mid-swap leaves the cache beside its place
    try:
        barrier()
        if not is_main():
            lock.join()
        yield
    finally:
        lock.release()


def _reasons(by_reason: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in by_reason.items()) or "none"


def report_plan(plan: SplitPlan) -> None:
    """What the fast checks found in a split, before the teacher loads (rank 0)."""
    if not is_main():
        return
    share = " (rank 0's share)" if rank_world()[1] > 1 else ""
    log.info(
        "[cache %s] %s%s: %d rows, %d usable, %d to skip (%s)",
        plan.split, plan.path, share, plan.rows_in, len(plan.usable), len(plan.unusable),
        _reasons(count_reasons(plan.unusable)),
    )  # fmt: skip


def split_counts(cfg: DistillConfig, where: SplitDir) -> dict[str, Any]:
    """A finished split's counts, with the last generation's record under ``generation`` and
    teacher-written counts when that mode is on (from the manifest's row tags and skips)."""
    from pipeline.cache.manifest import written_counts

    manifest = where.manifest()
    counts = manifest.counts | {"generation": manifest.last_generation}
    if cfg.custom.written_responses != "off":
        counts["teacher_written"] = written_counts(counts)
    return counts


@dataclass
class SplitJob:
    """One split of the cache stage on this rank: the plan, the split's directory, the teacher and the
    encoder. :meth:`run` forwards and writes what the cache lacks and returns the merged counts;
    :meth:`report` says what the generation did (rank 0)."""

    cfg: DistillConfig
    plan: SplitPlan
    where: SplitDir
    teacher: Any
    encoder: RowEncoder
    strict: bool = False
    progress: bool = True
    shard_bytes: int | None = None
    completions: dict[str, Any] | None = None  # by sample_id: what a student wrote before the teacher loaded

    @property
    def name(self) -> str:
        return self.plan.split

    # ---- run ------------------------------------------------------------------------------------
    def run(self, hold_lock: bool = True) -> dict[str, Any]:
        """Forward and write the rows the cache does not hold with their current content
        (:mod:`pipeline.teacher.incremental`); ``hold_lock=False`` when the caller holds the lock."""
        from pipeline.cache.diskfull import disk_full_as_error

        if (held := self._held_beyond_the_limit()) is not None:
            return held
        root = self.where.root
        lock = writer_lock(root) if hold_lock else nullcontext()
        with lock, disk_full_as_error(root), sigterm_keeps(root):
            with self._open_writer() as writer:  # sealed and recorded before the merge
                self._write(writer)
            return self.merged_counts()

    def _held_beyond_the_limit(self) -> dict[str, Any] | None:
        """A cache with more rows than ``--limit`` asks for: left as it is (its counts returned, and
        said), since a limit only ever means "at most the first N rows" of a cache still to be built."""
        if self.plan.limit is None or not self.where.root.is_dir():
            return None
        if not self.where.finished:
            return self._unfinished_beyond_the_limit()
        counts = self.where.manifest().counts
        held = int(counts.get("cached", 0)) + int(counts.get("skipped", 0))
        if held <= sum_over_ranks(self.plan.rows_in):
            return self._unfinished_beyond_the_limit()
        if is_main():
            log.info(
                "[cache %s] %s already holds %d rows (%s cached, %s skipped), more than --limit %d asks "
                "for: left as it is",
                self.name, self.where.root, held, counts.get("cached"), counts.get("skipped"), self.plan.limit,
            )  # fmt: skip
        return counts

    def _unfinished_beyond_the_limit(self) -> dict[str, Any] | None:
        """An unfinished run (killed, stopped) that already cached rows past what ``--limit`` asks
        for: finishing it under the limit could not reconcile its counts, so it is left as it is."""
        from pipeline.cache.live import scan

        state = scan(self.where.root)  # read without the lock, as planning does; nothing is written
        cached = [s for s, r in state.rows.items() if state.shard_generation[r.shard] == state.generation]
        skipped = [s for s, rec in state.skips.items() if rec["generation"] == state.generation]
        beyond = [s for s in cached + skipped if s not in self.plan.all_ids]
        if not beyond:
            return None
        if is_main():
            log.info(
                "[cache %s] %s holds an unfinished run's %d rows (%d cached, %d skipped), %d of them past "
                "--limit %d: left as it is; run the same command without --limit to finish it",
                self.name, self.where.root, len(cached) + len(skipped), len(cached), len(skipped),
                len(beyond), self.plan.limit,
            )  # fmt: skip
        return {"cached": len(cached), "skipped": len(skipped), "rows_in": None, "unfinished": True}

    def _open_writer(self) -> CacheWriter:
        from pipeline.cache.writer import CacheWriter
        from pipeline.fingerprint import build_fingerprint, effective_top_k

        cfg = self.cfg
        rank, world = rank_world()
        kwargs: dict[str, Any] = {}
        if self.shard_bytes:
            kwargs["shard_bytes"] = self.shard_bytes
        elif cfg.custom.cache_shard_mb:
            kwargs["shard_bytes"] = int(cfg.custom.cache_shard_mb * 2**20)
        return CacheWriter(
            self.where.root,
            fingerprint=build_fingerprint(cfg, self.encoder),
            top_k=effective_top_k(cfg, self.encoder),
            vocab_size=len(self.encoder.tokenizer),
            logprob_encoding=cfg.custom.logprob_encoding,
            rank=rank,
            world_size=world,
            extra_meta={"sources": source_paths(cfg, self.plan.files[0])},
            **kwargs,
        )

    def _write(self, writer: CacheWriter) -> None:
        """Key the rows against the writer's live state, record what needs no forward, forward the
        rest (dataset rows, then teacher-written ones) and finish the generation."""
        from tqdm import tqdm

        from pipeline.fingerprint import dataset_record
        from pipeline.teacher.incremental import encoding_hash_of, key_rows, record_before_forward
        from pipeline.teacher.rounds import writer_generation_record, written_key

        written = written_key(self.cfg)  # a student writer's rows are keyed by it too
        keyed = key_rows(self.plan, writer.state, encoding_hash_of(self.encoder), written)
        record_before_forward(writer, keyed, strict=self.strict)
        todo, to_write = split_written(keyed.todo, self.cfg.custom.written_responses)
        completions = self._student_completions(to_write) if written is not None else None
        forward = self._forward(keyed.digests)
        disable = not self.progress or not is_main() or bars_hidden()
        bar = tqdm(total=len(keyed.todo), desc=f"cache {self.name}", unit="sample", disable=disable)

        # A skip carries its row's digest: a later generation keeps it while the row is unchanged,
        # instead of encoding (or, for a teacher-written row, generating) the row again.
        def skip(sid: str, reason: str, detail: str) -> None:
            writer.skip(sid, reason, detail, keyed.digests.get(sid, ""))

        def advance(n: int) -> None:
            bar.update(n)
            check_sigterm()  # a SIGTERM stops here, between written rows

        try:
            self._cache_labelled(todo, writer.add, skip, forward, bar)
            cache_written_rows(
                self.cfg, self.teacher, self.encoder, to_write, writer.add, skip, forward,
                strict=self.strict, progress=advance, completions=completions,
            )  # fmt: skip
        finally:
            bar.close()  # ends the bar's line, so an error (a full disk, a SIGTERM) prints on its own
        record = dataset_record(self.plan.files, self.plan.rows_in)
        if (writer_record := writer_generation_record(self.cfg)) is not None:
            record["written_by"] = writer_record
        writer.finalize(rows_in=self.plan.rows_in, reused=keyed.reused, dataset=record)

    def _student_completions(self, to_write: list[Row]) -> dict[str, Any]:
        """The student's responses for ``to_write``: those written before the teacher loaded
        (:func:`pipeline.teacher.rounds.write_round`), any other row written now (a caller that
        passed none, or a row the earlier keying did not foresee)."""
        from pipeline.teacher.rounds import student_completions

        have = dict(self.completions or {})
        missing = [r for r in to_write if r.sample_id not in have]
        if missing:
            now = student_completions(self.cfg, self.encoder, {self.name: missing}, self.progress)
            have |= now[self.name]
        return have

    def _forward(self, digests: dict[str, str]) -> Forward:
        """THE teacher forward of the cache stage, for dataset rows and teacher-written rows alike:
        a collated batch and its ``(sample_id, encoding_hash, n_tokens)`` -> one ``CachedSample`` per
        row, each carrying its dataset row's digest (what a later generation compares)."""
        from pipeline.fingerprint import effective_top_k
        from pipeline.teacher.forward import teacher_topk

        teacher, temperature = self.teacher, self.cfg.custom.loss_temperature
        device = next(teacher.parameters()).device
        real_vocab = len(self.encoder.tokenizer)
        top_k = effective_top_k(self.cfg, self.encoder)

        def forward(batch: dict[str, Any], ids: list[tuple[str, str, int]]) -> list[Any]:
            topk = teacher_topk(teacher, to_device(batch, device), top_k, real_vocab, temperature)
            return [replace(s, row_digest=digests[s.sample_id]) for s in split_samples(topk, ids)]

        return forward

    def _cache_labelled(
        self,
        rows: list[Row],
        add: Callable[[Any], None],
        skip: Callable[[str, str, str], None],
        forward: Forward,
        bar: Any,
    ) -> None:
        """Encode ``rows`` in dataloader workers, forward every batch, add each sample or skip the row."""
        custom = self.cfg.custom
        n_tok, t0 = 0, time.perf_counter()
        for item in iterate_batches(
            self.encoder, rows, custom.cache_batch_size, self.cfg.data.dataloader_num_workers
        ):
            for sid, reason, detail in item["skipped"]:
                if self.strict:
                    raise DataError(detail)
                skip(sid, reason, detail)
            if item["batch"] is not None:
                for sample in forward(item["batch"], item["ids"]):
                    add(sample)
                    n_tok += sample.num_targets
            bar.update(len(item["ids"]) + len(item["skipped"]))
            bar.set_postfix(tokens_per_s=f"{n_tok / max(time.perf_counter() - t0, 1e-9):.0f}")
            check_sigterm()  # a SIGTERM stops here, between batches: the writer then seals what it holds

    def merged_counts(self) -> dict[str, Any]:
        """The split's counts once every rank finished (rank 0 merges under torchrun)."""
        from pipeline.cache.merge import merge_rank_manifests

        if rank_world()[1] > 1:
            barrier()
            if is_main():
                merge_rank_manifests(self.where.root)
            barrier()
        return split_counts(self.cfg, self.where)

    # ---- report ---------------------------------------------------------------------------------
    def report(self, counts: dict[str, Any]) -> None:
        """What this generation did and what the cache holds now (rank 0, a finished run only)."""
        from pipeline.teacher.incremental import generation_line

        if not is_main() or counts.get("unfinished"):
            return
        reasons = _reasons(counts.get("skipped_by_reason", {}))
        log.info("[cache %s] %s", self.name, generation_line(self.where.manifest()))
        log.info(
            "[cache %s] the cache holds %s rows, %s skipped (%s)",
            self.name, counts.get("cached"), counts.get("skipped"), reasons,
        )  # fmt: skip
        if "teacher_written" in counts:
            w = counts["teacher_written"]
            who = "teacher" if self.cfg.custom.written_by == "teacher" else "student"
            log.info(
                "[cache %s] %s-written %d (re-encoding changed the ids of %d; hit max_new_tokens: "
                "kept %d, skipped %d)",
                self.name, who, w["written"], w["retokenized"], w["unfinished_kept"], w["unfinished_skipped"],
            )  # fmt: skip


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

    ``plan`` (from :func:`plan_split`) is made here when not given; ``hold_lock=False`` when the caller
    already holds the directory's :func:`writer_lock`.
    """
    plan = plan or plan_split(cfg, split, strict=strict, limit=limit)
    where = CacheDir.of(cfg).split(split)
    job = SplitJob(
        cfg, plan, where, teacher, encoder, strict=strict, progress=progress, shard_bytes=shard_bytes
    )
    return job.run(hold_lock=hold_lock)


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
    from pipeline.compat import check_pair
    from pipeline.encoding import RowEncoder
    from pipeline.fingerprint import teacher_path
    from pipeline.teacher.rounds import write_round
    from pipeline.versions import check_versions

    check_versions()
    if not cfg.custom.variant.reads_cache or not cfg.custom.teacher_cache:
        raise ConfigError("distill cache needs custom.trainer_variant: gkd_cached and custom.teacher_cache")
    strict = strict or cfg.custom.strict  # `--strict` and custom.strict mean the same
    splits = (
        ["train", "val"]
        if split == "all" and cfg.data.val_dataset
        else ["train" if split == "all" else split]
    )
    teacher_path(cfg)  # a missing local teacher is a ConfigError now, not after planning or a hub retry
    cache = CacheDir.of(cfg)
    # Every split's path, lines and images before anything slow (teacher load, first forward).
    plans = {s: plan_split(cfg, s, strict=strict, limit=limit) for s in splits}
    for plan in plans.values():
        report_plan(plan)
    results = {}
    with sigterm_stops_cleanly(), ExitStack() as locks:
        for s in splits:
            locks.enter_context(writer_lock(cache.split(s).root))
        check_pair(cfg)
        encoder = RowEncoder.from_config(cfg)
        # A student writer (custom.written_by) writes every split's responses and is released first.
        written = write_round(cfg, encoder, plans, cache, progress) or {}
        teacher = load_teacher(cfg, teacher_device_map())
        if encoder.template.use_model:
            encoder.template.model = teacher  # the template computes rope position ids with the model
        for s in splits:
            job = SplitJob(cfg, plans[s], cache.split(s), teacher, encoder, strict, progress)
            job.completions = written.get(s)
            results[s] = job.run(hold_lock=False)
            job.report(results[s])
            if compact and not results[s].get("unfinished"):
                with sigterm_waits():  # a compaction finishes (or never starts its swap) first
                    results[s] = compact_split(cfg, s, limit)
    return results


def compact_split(cfg: DistillConfig, split: str, limit: int | None) -> dict[str, Any]:
    """Rewrite ``split``'s cache holding only the rows of its dataset (rank 0; the others wait).
    The caller holds the writer lock and has just cached the split, so nothing kept is stale."""
    from pipeline.cache.compact import compact
    from pipeline.data import read_split_rows
    from pipeline.splits import split_files

    where = CacheDir.of(cfg).split(split)
    if is_main():
        before = where.manifest()
        keep = {r.sample_id for r in read_split_rows(split_files(cfg, split))[:limit]}
        shard_bytes = int(cfg.custom.cache_shard_mb * 2**20) if cfg.custom.cache_shard_mb else None
        counts = compact(where.root, keep, shard_bytes=shard_bytes)
        held = before.counts["cached"] + before.counts["skipped"]
        log.info(
            "[cache %s] compacted: kept %d rows and %d skips, dropped %d rows the dataset does not have "
            "and %d superseded versions",
            split, counts["cached"], counts["skipped"], held - counts["cached"] - counts["skipped"],
            before.superseded_versions,
        )  # fmt: skip
    barrier()
    return split_counts(cfg, where) if is_main() else {}
