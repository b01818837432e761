"""``distill cache --dry-run``: how big the cache will be and how long the cache stage will take,
before committing GPU hours and disk.

1. The stage's own row check (:func:`pipeline.teacher.incremental.plan_split`: lines, images) and an
   encoding pass over the usable rows (the same ``RowEncoder``, no teacher): rows, skips by reason,
   supervised targets and encoded tokens per split. Rows whose response the teacher writes
   (``custom.written_responses``) have no response yet: they are counted apart (``written``).
2. The real cache stage (:func:`pipeline.teacher.stage.cache_split`, the real teacher, the real writer)
   on the first rows of the first split, into a temporary directory, at two sizes: ``small`` (one
   batch) and ``large`` (``measure_batches`` batches), after one warm-up batch. Each size runs
   ``repeats`` times and the fastest run counts (:func:`fastest`): on a shared machine another
   process only ever adds time, and a single run that met a busy moment once predicted 182 s for a
   stage that took 34 s. Two sizes separate the fixed costs from the per-unit ones:

   - bytes: ``shard_fixed + bytes_per_target * targets``, where ``shard_fixed`` is what every shard
     pays whatever it holds (schema metadata with the fingerprint, Arrow footer, per-buffer
     compression headers of its record batch). zstd compresses a fuller record batch (up to 1 MiB)
     slightly better, so a larger ``large`` run predicts a large split more closely;
   - time: ``split_fixed + seconds_per_token * tokens`` (tokens: encoded input tokens, what a
     forward pass costs), where ``split_fixed`` is what every split pays (dataset hash, dataloader
     start, manifest merge). The teacher's weight hash is paid once per run and timed on its own.

3. With teacher-written rows, the real stage on the first ``measure_batches`` batches of them alone:
   targets per written row (the teacher's response length), and seconds per written row (generation,
   re-encoding and the teacher forward together), added to the split's prediction per written row.

The prediction for a split applies these to the counts of step 1. The model load is timed and shown
apart: the stage's own wall-clock is counted from a loaded model.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.data import Row, count_reasons
from pipeline.errors import ConfigError, DataError

if TYPE_CHECKING:
    from pipeline.config import DistillConfig
    from pipeline.encoding import RowEncoder

log = logging.getLogger(__name__)


@dataclass
class SplitCounts:
    """Step 1 for one split: rows read, rows that encode, targets and tokens of those, skips by reason."""

    rows: int
    encodable: int
    targets: int
    tokens: int
    skipped_by_reason: dict[str, int]
    tokens_by_row: list[int]  # encoded tokens of each encodable row, in split order
    written: int = 0  # rows whose response the teacher will write (not in targets / tokens)


@dataclass
class Measurement:
    """The real stage at one size: rows, targets, encoded tokens, shard bytes, shards, seconds."""

    rows: int
    targets: int
    tokens: int
    bytes: int
    shards: int
    seconds: float


class _Count:
    """Dataloader collate: (targets, tokens, skip reason) per row; picklable for worker processes."""

    def __init__(self, encoder: RowEncoder):
        self.encoder = encoder

    def __call__(self, rows: list[Row]) -> list[tuple[int, int, str | None]]:
        out: list[tuple[int, int, str | None]] = []
        for row in rows:
            try:
                enc = self.encoder.encode(row)
            except DataError as exc:
                out.append((0, 0, exc.reason))
                continue
            out.append((len(enc.target_positions()), len(enc.inputs["input_ids"]), None))
        return out


def count_split(
    encoder: RowEncoder, plan: Any, batch_size: int, workers: int, written_mode: str = "off"
) -> SplitCounts:
    """Encode ``plan``'s usable rows (no teacher); count what the cache stage would cache and skip.
    Rows the teacher will write (``written_mode``) are only counted: their response does not exist yet."""
    from pipeline.teacher.written import split_written

    reasons = count_reasons(plan.unusable)
    labelled, written = split_written(plan.usable, written_mode)
    loader: Any = torch.utils.data.DataLoader(
        labelled,  # type: ignore[arg-type]  # a list is a map-style dataset
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_Count(encoder),
    )
    targets = 0
    tokens_by_row: list[int] = []
    for batch in loader:
        for n_targets, n_tokens, reason in batch:
            if reason is not None:
                reasons[reason] = reasons.get(reason, 0) + 1
                continue
            targets += n_targets
            tokens_by_row.append(n_tokens)
    return SplitCounts(
        rows=plan.rows_in,
        encodable=len(tokens_by_row),
        targets=targets,
        tokens=sum(tokens_by_row),
        skipped_by_reason=dict(sorted(reasons.items())),
        tokens_by_row=tokens_by_row,
        written=len(written),
    )


def measure(
    cfg: DistillConfig,
    split: str,
    teacher: Any,
    encoder: RowEncoder,
    n_rows: int,
    written: bool | None = None,
    plan: Any = None,
) -> Measurement:
    """Run the real cache stage on the first ``n_rows`` rows of ``split`` into a temporary directory
    (timed from a checked plan, as the stage runs after loading the model). ``written`` True / False
    keeps only rows the teacher writes / does not write (None: every row). ``plan``: the split's
    checked plan, when the caller has one (else it is read again)."""
    from pipeline.cache.cachedir import CacheDir
    from pipeline.teacher.incremental import plan_split
    from pipeline.teacher.stage import cache_split
    from pipeline.teacher.written import split_written

    with tempfile.TemporaryDirectory(prefix="dry-run-") as tmp:
        cfg_tmp = replace(cfg, custom=replace(cfg.custom, teacher_cache=tmp))
        plan = plan if plan is not None else plan_split(cfg_tmp, split)
        if written is not None:
            kinds = split_written(plan.usable, cfg.custom.written_responses)
            plan = replace(plan, usable=kinds[1] if written else kinds[0], unusable=[])
        plan = replace(plan, usable=plan.usable[:n_rows], unusable=[], rows_in=min(n_rows, len(plan.usable)))
        t0 = time.perf_counter()
        counts = cache_split(cfg_tmp, split, teacher, encoder, plan=plan, progress=False)
        seconds = time.perf_counter() - t0
        record = CacheDir(Path(tmp)).split(split).manifest()
    return Measurement(
        rows=int(counts["cached"]),
        targets=int(counts["targets"]),
        tokens=0,  # filled in by the caller from the encoding pass
        bytes=record.shard_bytes,
        shards=len(record.shards),
        seconds=seconds,
    )


def fastest(run: Callable[[], Measurement], repeats: int) -> Measurement:
    """``run()`` ``repeats`` times (at least once); the run with the fewest seconds.

    Rows, targets and bytes are the same on every run; only the time varies, and interference (another
    process, a page-cache miss) only ever adds to it, so the minimum is the closest to what the work
    itself costs.
    """
    runs = [run() for _ in range(max(repeats, 1))]
    return min(runs, key=lambda m: m.seconds)


def _line(
    small: Measurement, large: Measurement, x_small: float, x_large: float, y: str
) -> tuple[float, float]:
    """(fixed, per unit) of the line through the two measurements' ``y`` at ``x``; never negative."""
    y_small, y_large = float(getattr(small, y)), float(getattr(large, y))
    if x_large <= x_small:  # one size only (a tiny split): everything is per unit
        return 0.0, y_large / max(x_large, 1.0)
    slope = max((y_large - y_small) / (x_large - x_small), 0.0)
    fixed = max(y_small - slope * x_small, 0.0)
    return fixed, slope


def predict(
    counts: SplitCounts,
    small: Measurement,
    large: Measurement,
    shard_bytes: int,
    once_s: float = 0.0,
    written: Measurement | None = None,
) -> dict[str, Any]:
    """Expected bytes and seconds of caching a split with ``counts`` from the two measurements.

    ``once_s``: seconds paid once per run (the teacher weight hash) added to this split. ``written``:
    the measurement of teacher-written rows alone, scaled to the split's ``counts.written`` rows.
    """
    w_targets = w_seconds = 0.0
    if counts.written and written is not None and written.rows:
        w_targets = counts.written * written.targets / written.rows
        w_seconds = counts.written * written.seconds / written.rows
    if small.rows == 0 and written is not None:  # every row is teacher-written
        small = large = written
    # Bytes per target do not depend on who wrote the response: fit them on the widest pair measured.
    by_targets = sorted(
        [m for m in (small, large, written) if m is not None and m.rows], key=lambda m: m.targets
    )
    lo, hi = (by_targets[0], by_targets[-1]) if by_targets else (small, large)
    shard_fixed, per_target = _line(lo, hi, lo.targets, hi.targets, "bytes")
    # The small run's shard count is 1; a split past the shard budget pays the fixed part per shard.
    targets = counts.targets + w_targets
    n_shards = max(1, math.ceil(per_target * targets / shard_bytes))
    split_fixed, per_token = _line(small, large, small.tokens, large.tokens, "seconds")
    if small is written:  # time per written row already holds everything
        split_fixed, per_token = 0.0, 0.0
    return {
        "rows": counts.rows,
        "cached": counts.encodable + counts.written,
        "written": counts.written,
        "skipped_by_reason": counts.skipped_by_reason,
        "targets": round(targets),
        "tokens": counts.tokens,
        "bytes": round(n_shards * shard_fixed + per_target * targets),
        "bytes_per_target": per_target,
        "shard_fixed_bytes": shard_fixed,
        "shards": n_shards,
        "seconds": once_s + split_fixed + per_token * counts.tokens + w_seconds,
        "split_fixed_s": split_fixed,
        "seconds_per_1k_tokens": 1e3 * per_token,
    }


def run_dry_run(
    cfg: DistillConfig,
    split: str = "all",
    limit: int | None = None,
    measure_batches: int = 6,
    repeats: int = 3,
) -> dict[str, Any]:
    """``distill cache --dry-run``: log and return the expected size and time of each split.

    ``repeats``: runs of each measured size, the fastest counting (``fastest``)."""
    from pipeline.cache.cachedir import CacheDir
    from pipeline.compat import check_pair
    from pipeline.encoding import RowEncoder
    from pipeline.fingerprint import model_dir_hash, teacher_path
    from pipeline.models import load_teacher, teacher_device_map
    from pipeline.teacher.incremental import plan_split, preview
    from pipeline.teacher.rounds import written_key
    from pipeline.versions import check_versions

    check_versions()
    if not cfg.custom.variant.reads_cache or not cfg.custom.teacher_cache:
        raise ConfigError("distill cache needs custom.trainer_variant: gkd_cached and custom.teacher_cache")
    check_pair(cfg)
    splits = (
        ["train", "val"]
        if split == "all" and cfg.data.val_dataset
        else [split if split != "all" else "train"]
    )
    plans = {s: plan_split(cfg, s, limit=limit) for s in splits}
    t0 = time.perf_counter()
    teacher = load_teacher(cfg, teacher_device_map())
    load_s = time.perf_counter() - t0
    encoder = RowEncoder.from_config(cfg)
    if encoder.template.use_model:
        encoder.template.model = teacher
    for s in splits:  # what the stage will reuse and compute, before any forward
        keyed = preview(plans[s], CacheDir.of(cfg).split(s).root, encoder, written_key(cfg))
        log.info("[dry-run %s] %s", s, keyed.line(plans[s].rows_in))
    counts = {
        s: count_split(
            encoder, plans[s], cfg.custom.cache_batch_size, cfg.data.dataloader_num_workers,
            cfg.custom.written_responses,
        )
        for s in splits
    }  # fmt: skip
    t0 = time.perf_counter()
    model_dir_hash(teacher_path(cfg))  # paid once per run by the stage's fingerprint; cached after
    hash_s = time.perf_counter() - t0
    runs, written_m, w_split = _measure_splits(
        cfg, splits, teacher, encoder, plans, counts, measure_batches, repeats
    )
    shard_bytes = int(cfg.custom.cache_shard_mb * 2**20) if cfg.custom.cache_shard_mb else 256 * 2**20
    out: dict[str, Any] = {"model_load_s": load_s, "teacher_hash_s": hash_s, "splits": {}}
    for i, s in enumerate(splits):
        out["splits"][s] = predict(
            counts[s], runs[0], runs[1], shard_bytes, hash_s if i == 0 else 0.0, written_m
        )
        _log_split(cfg, s, out["splits"][s])
    _log_measured(runs[1], splits[0], written_m, w_split, load_s, hash_s)
    return out


def _log_measured(
    measured: Measurement,
    split: str,
    written_m: Measurement | None,
    w_split: str | None,
    load_s: float,
    hash_s: float,
) -> None:
    """What the estimates were measured on, and the costs they leave out."""
    if written_m is not None:
        log.info(
            "[dry-run] teacher-written rows measured on %d rows of %s: %.1f targets and %.3f s per row",
            written_m.rows,
            w_split,
            written_m.targets / max(written_m.rows, 1),
            written_m.seconds / max(written_m.rows, 1),
        )
    log.info(
        "[dry-run] measured on the first %d rows of %s: %.2f s; model load %.1f s (not in the estimates), "
        "teacher weight hash %.1f s",
        measured.rows,
        split,
        measured.seconds,
        load_s,
        hash_s,
    )


def _measure_splits(
    cfg: DistillConfig,
    splits: list[str],
    teacher: Any,
    encoder: RowEncoder,
    plans: dict[str, Any],
    counts: dict[str, SplitCounts],
    measure_batches: int,
    repeats: int,
) -> tuple[list[Measurement], Measurement | None, str | None]:
    """The stage timed on the first split's first one and ``measure_batches`` batches, and on a fuller
    batch of teacher-written rows when a split has them (with that split's name)."""
    bs = cfg.custom.cache_batch_size
    first = splits[0]
    rows_avail = counts[first].encodable
    labelled = False if any(c.written for c in counts.values()) else None
    sizes = (min(bs, rows_avail), min(measure_batches * bs, rows_avail))
    runs = _measure_sizes(cfg, first, teacher, encoder, plans[first], counts[first], sizes, labelled, repeats)
    w_split = next((s for s in splits if counts[s].written), None)
    if w_split is None:
        return runs, None, None
    n_w = min(2 * measure_batches * bs, counts[w_split].written)  # a fuller record batch: closer bytes
    run = partial(measure, cfg, w_split, teacher, encoder, n_w, True, plans[w_split])
    return runs, fastest(run, repeats), w_split


def _measure_sizes(
    cfg: DistillConfig,
    split: str,
    teacher: Any,
    encoder: RowEncoder,
    plan: Any,
    counts: SplitCounts,
    sizes: tuple[int, ...],
    labelled: bool | None,
    repeats: int,
) -> list[Measurement]:
    """The real stage on the first ``n`` rows of ``split`` for each ``n`` of ``sizes``, after one warm-up
    run of the first size; the fastest of ``repeats`` runs each, tokens counted from ``counts``."""
    if sizes[0]:
        measure(cfg, split, teacher, encoder, sizes[0], labelled, plan)  # warm-up
    runs = []
    for n in sizes:
        m = Measurement(0, 0, 0, 0, 0, 0.0)
        if n:
            m = fastest(partial(measure, cfg, split, teacher, encoder, n, labelled, plan), repeats)
        m.tokens = sum(counts.tokens_by_row[: m.rows])
        runs.append(m)
    return runs


def _log_split(cfg: DistillConfig, split: str, p: dict[str, Any]) -> None:
    reasons = ", ".join(f"{k}: {v}" for k, v in p["skipped_by_reason"].items()) or "none"
    log.info(
        f"[dry-run {split}] rows {p['rows']}: would cache {p['cached']} ({p['written']} teacher-written), "
        f"skip {p['rows'] - p['cached']} ({reasons}); {p['targets']} supervised targets\n"
        f"[dry-run {split}] expected {p['bytes'] / 2**20:.2f} MiB in {p['shards']} shard(s) "
        f"({p['bytes_per_target']:.1f} B/target at k={cfg.custom.top_k}, "
        f"{cfg.custom.logprob_encoding}); expected {p['seconds']:.1f} s after the model is loaded"
    )
