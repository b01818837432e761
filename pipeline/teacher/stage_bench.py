"""``distill bench cache-write``: what the cache stage costs over the teacher forward it cannot avoid;
``distill bench dry-run``: how close ``distill cache --dry-run`` comes to the real stage.

``--incremental``: the cache stage on a dataset whose cache already holds all but its last 5% of rows,
against the same stage building that dataset's cache from nothing; the ratio is ``incremental_over_full``.

The bare loop uses the same dataloader, encoding and teacher forward (``model(**batch)``) with no top-k
extraction and no writing; the full side is the cache stage itself (``cache_split``) into a temporary
directory. Both alternate in one process for ``rounds`` rounds; the JSON line printed last holds each
side's median and their ratio.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.cache.cachedir import CacheDir
from pipeline.data import Row, read_rows
from pipeline.encoding import IGNORE_INDEX, RowEncoder
from pipeline.models import load_teacher, teacher_device_map
from pipeline.splits import split_file
from pipeline.teacher.batches import iterate_batches, to_device
from pipeline.teacher.stage import cache_split

if TYPE_CHECKING:
    from pipeline.config import DistillConfig


log = logging.getLogger(__name__)


def bench_cache_write(cfg: DistillConfig, limit: int | None = None, rounds: int = 3) -> dict[str, Any]:
    """``distill bench cache-write``: the full cache stage vs a bare teacher loop over the same rows.

    The bare loop uses the same dataloader, encoding and teacher forward (``model(**batch)``, the
    forward any teacher run pays) with no top-k extraction and no writing. Both run in this process,
    alternately for ``rounds`` rounds after one warm-up batch; each side's median is reported. Prints one
    JSON line last.
    """

    teacher = load_teacher(cfg, teacher_device_map())
    encoder = RowEncoder.from_config(cfg)
    if encoder.template.use_model:
        encoder.template.model = teacher
    rows = [r for r in read_rows(split_file(cfg, "train"))[: limit or None] if isinstance(r, Row)]
    device = next(teacher.parameters()).device
    bs, workers = cfg.custom.cache_batch_size, cfg.data.dataloader_num_workers

    def bare(rows_: list[Row]) -> int:
        n = 0
        with torch.no_grad():
            for item in iterate_batches(encoder, rows_, bs, workers):
                if item["batch"] is not None:
                    batch = to_device(item["batch"], device)
                    teacher(**{k: v for k, v in batch.items() if k not in ("labels", "text_position_ids")})
                    n += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        return n

    def full() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            cfg_tmp = replace(cfg, custom=replace(cfg.custom, teacher_cache=tmp))
            t0 = time.perf_counter()
            cache_split(cfg_tmp, "train", teacher, encoder, limit=len(rows), progress=False)
            return time.perf_counter() - t0

    bare(rows[:bs])  # warm-up: allocator, kernels, lazy imports
    # Alternate the two loops and keep each one's median, so drift in machine load hits both alike.
    bare_times, cache_times, tokens = [], [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        tokens = bare(rows)
        bare_times.append(time.perf_counter() - t0)
        cache_times.append(full())
    forward_s, cache_s = statistics.median(bare_times), statistics.median(cache_times)
    out = {
        "rows": len(rows),
        "tokens": tokens,
        "forward_s": round(forward_s, 3),
        "cache_s": round(cache_s, 3),
        "overhead_ratio": round(cache_s / forward_s, 4),
        "tokens_per_s": round(tokens / cache_s, 1),
    }
    log.info(
        "bare teacher loop %.2f s | cache stage %.2f s | ratio %.3f | %d supervised tokens",
        forward_s,
        cache_s,
        cache_s / forward_s,
        tokens,
    )
    return out


def bench_dry_run(cfg: DistillConfig, rounds: int = 3, repeats: int = 3) -> dict[str, Any]:
    """``distill bench dry-run``: the dry run's predicted seconds and bytes over the real cache stage's.

    Each round runs the dry run (``repeats`` runs per measured size) and then the real stage on every
    split into a temporary directory, both with the teacher loaded; prints one line per round and split
    and one JSON line last with every ratio and their medians. The weight hash is left out of both
    sides: the dry run pays it once, and the real stage then finds it cached in this process.
    """
    from pipeline.teacher.dry_run import run_dry_run
    from pipeline.teacher.incremental import plan_split

    teacher = load_teacher(cfg, teacher_device_map())
    encoder = RowEncoder.from_config(cfg)
    if encoder.template.use_model:
        encoder.template.model = teacher
    ratios: list[dict[str, Any]] = []
    for r in range(rounds):
        predicted = run_dry_run(cfg, repeats=repeats)
        hash_s = predicted["teacher_hash_s"]
        with tempfile.TemporaryDirectory() as tmp:
            cfg_tmp = replace(cfg, custom=replace(cfg.custom, teacher_cache=tmp))
            for i, (split, p) in enumerate(predicted["splits"].items()):
                plan = plan_split(cfg_tmp, split)
                t0 = time.perf_counter()
                cache_split(cfg_tmp, split, teacher, encoder, plan=plan, progress=False)
                real_s = time.perf_counter() - t0
                real_bytes = CacheDir(Path(tmp)).split(split).manifest().shard_bytes
                pred_s = p["seconds"] - (hash_s if i == 0 else 0.0)
                row = {
                    "round": r,
                    "split": split,
                    "predicted_s": round(pred_s, 3),
                    "real_s": round(real_s, 3),
                    "seconds_ratio": round(pred_s / real_s, 4),
                    "bytes_ratio": round(p["bytes"] / real_bytes, 4),
                }
                ratios.append(row)
                log.info(
                    "round %d %s: predicted %.2f s / real %.2f s = %.3f; bytes %.3f",
                    r,
                    split,
                    pred_s,
                    real_s,
                    row["seconds_ratio"],
                    row["bytes_ratio"],
                )
    out = {
        "repeats": repeats,
        "rounds": ratios,
        "median_seconds_ratio": round(statistics.median(r["seconds_ratio"] for r in ratios), 4),
        "median_bytes_ratio": round(statistics.median(r["bytes_ratio"] for r in ratios), 4),
    }
    return out


@contextlib.contextmanager
def _counting_forwards() -> Iterator[list[int]]:
    """Count the rows of every teacher forward the cache stage runs inside the block (the stage looks
    ``teacher_topk`` up at call time); the list is cleared by the caller between timings."""
    import pipeline.teacher.forward as fw

    forwarded: list[int] = []
    real_topk = fw.teacher_topk

    def counting(model: Any, batch: dict[str, Any], *a: Any, **k: Any) -> Any:
        forwarded.append(int(batch["input_ids"].shape[0]))
        return real_topk(model, batch, *a, **k)

    fw.teacher_topk = counting  # type: ignore[assignment]
    try:
        yield forwarded
    finally:
        fw.teacher_topk = real_topk  # type: ignore[assignment]


def bench_cache_write_incremental(
    cfg: DistillConfig, limit: int | None = None, rounds: int = 3, new_fraction: float = 0.05
) -> dict[str, Any]:
    """``distill bench cache-write --incremental``: the cache stage on the train split with its last
    ``new_fraction`` of rows new to an existing cache, vs a full cache of the same split.

    Each round builds the existing cache of the other rows untimed, then times both sides in turn
    (the teacher is loaded once, outside every timing); the teacher forward is inside both timings and
    the rows it ran on are counted. Returns the summary.
    """
    from pipeline.data import write_rows

    teacher = load_teacher(cfg, teacher_device_map())
    encoder = RowEncoder.from_config(cfg)
    if encoder.template.use_model:
        encoder.template.model = teacher
    rows = [r for r in read_rows(split_file(cfg, "train"))[: limit or None] if isinstance(r, Row)]
    n_new = max(1, round(new_fraction * len(rows)))
    full_s, inc_s, full_rows, inc_rows = [], [], 0, 0
    with _counting_forwards() as forwarded, tempfile.TemporaryDirectory() as scratch:

        def timed(tmp: str, jsonl: str) -> tuple[float, int]:
            data = replace(cfg.data, dataset=[jsonl], val_dataset=[])
            run_cfg = replace(cfg, data=data, custom=replace(cfg.custom, teacher_cache=tmp))
            forwarded.clear()
            t0 = time.perf_counter()
            cache_split(run_cfg, "train", teacher, encoder, progress=False)
            return time.perf_counter() - t0, sum(forwarded)

        base, whole = f"{scratch}/base.jsonl", f"{scratch}/all.jsonl"
        write_rows(rows[:-n_new], base)
        write_rows(rows, whole)
        timed(f"{scratch}/warm", base)  # warm-up: allocator, kernels, lazy imports
        for r in range(rounds):
            t, full_rows = timed(f"{scratch}/full{r}", whole)
            full_s.append(t)
            timed(f"{scratch}/inc{r}", base)  # the existing cache (untimed)
            t, inc_rows = timed(f"{scratch}/inc{r}", whole)
            inc_s.append(t)
    full, inc = statistics.median(full_s), statistics.median(inc_s)
    log.info(
        "full cache %.2f s (%d rows forwarded) | incremental %.2f s (%d rows forwarded) | ratio %.3f",
        full,
        full_rows,
        inc,
        inc_rows,
        inc / full,
    )
    return {
        "rows": len(rows),
        "new_rows": n_new,
        "full_s": round(full, 3),
        "incremental_s": round(inc, 3),
        "full_forwarded_rows": full_rows,
        "incremental_forwarded_rows": inc_rows,
        "incremental_over_full": round(inc / full, 4),
    }
