"""``distill cache --dry-run``: how big the cache will be and how long the cache stage will take,
before committing GPU hours and disk.

1. The stage's own row check (:func:`pipeline.teacher.stage.plan_split`: lines, images) and an
   encoding pass over the usable rows (the same ``RowEncoder``, no teacher): rows, skips by reason,
   supervised targets and encoded tokens per split. Rows whose response the teacher writes
   (``custom.written_responses``) are counted with the dataset's response, an approximation.
2. The real cache stage (:func:`pipeline.teacher.stage.cache_split`, the real teacher, the real writer)
   on the first rows of the first split, into a temporary directory, at two sizes: ``small`` (one
   batch) and ``large`` (``measure_batches`` batches), after one warm-up batch. Two sizes separate
   the fixed costs from the per-unit ones:

   - bytes: ``shard_fixed + bytes_per_target * targets``, where ``shard_fixed`` is what every shard
     pays whatever it holds (schema metadata with the fingerprint, Arrow footer, per-buffer
     compression headers of its record batch). zstd compresses a fuller record batch (up to 1 MiB)
     slightly better, so a larger ``large`` run predicts a large split more closely;
   - time: ``split_fixed + seconds_per_token * tokens`` (tokens: encoded input tokens, what a
     forward pass costs), where ``split_fixed`` is what every split pays (dataset hash, dataloader
     start, manifest merge). The teacher's weight hash is paid once per run and timed on its own.

The prediction for a split applies these to the counts of step 1. The model load is timed and shown
apart: the stage's own wall-clock is counted from a loaded model.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.data import Row, count_reasons
from pipeline.errors import ConfigError, DataError

if TYPE_CHECKING:
    from pipeline.config import DistillConfig
    from pipeline.encoding import RowEncoder


@dataclass
class SplitCounts:
    """Step 1 for one split: rows read, rows that encode, targets and tokens of those, skips by reason."""

    rows: int
    encodable: int
    targets: int
    tokens: int
    skipped_by_reason: dict[str, int]
    tokens_by_row: list[int]  # encoded tokens of each encodable row, in split order


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
                out.append((0, 0, getattr(exc, "reason", "encode_failed")))
                continue
            out.append((len(enc.target_positions()), len(enc.inputs["input_ids"]), None))
        return out


def count_split(encoder: RowEncoder, plan: Any, batch_size: int, workers: int) -> SplitCounts:
    """Encode ``plan``'s usable rows (no teacher); count what the cache stage would cache and skip."""
    reasons = count_reasons(plan.unusable)
    loader: Any = torch.utils.data.DataLoader(
        plan.usable,  # type: ignore[arg-type]  # a list is a map-style dataset
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
    )


def measure(cfg: DistillConfig, split: str, teacher: Any, encoder: RowEncoder, n_rows: int) -> Measurement:
    """Run the real cache stage on the first ``n_rows`` rows of ``split`` into a temporary directory
    (timed from a checked plan, as the stage runs after loading the model)."""
    from pipeline.cache.manifest import read_json
    from pipeline.teacher.stage import cache_split, plan_split

    with tempfile.TemporaryDirectory(prefix="dry-run-") as tmp:
        cfg_tmp = replace(cfg, custom=replace(cfg.custom, teacher_cache=tmp))
        plan = plan_split(cfg_tmp, split, limit=n_rows)
        t0 = time.perf_counter()
        counts = cache_split(cfg_tmp, split, teacher, encoder, plan=plan, progress=False)
        seconds = time.perf_counter() - t0
        manifest = read_json(Path(tmp) / split / "manifest.json")
        shards = manifest["shards"]
    return Measurement(
        rows=int(counts["cached"]),
        targets=int(counts["targets"]),
        tokens=0,  # filled in by the caller from the encoding pass
        bytes=sum(int(s["bytes"]) for s in shards),
        shards=len(shards),
        seconds=seconds,
    )


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
    counts: SplitCounts, small: Measurement, large: Measurement, shard_bytes: int, once_s: float = 0.0
) -> dict[str, Any]:
    """Expected bytes and seconds of caching a split with ``counts`` from the two measurements.

    ``once_s``: seconds paid once per run (the teacher weight hash) added to this split.
    """
    shard_fixed, per_target = _line(small, large, small.targets, large.targets, "bytes")
    # The small run's shard count is 1; a split past the shard budget pays the fixed part per shard.
    n_shards = max(1, math.ceil(per_target * counts.targets / shard_bytes))
    split_fixed, per_token = _line(small, large, small.tokens, large.tokens, "seconds")
    return {
        "rows": counts.rows,
        "cached": counts.encodable,
        "skipped_by_reason": counts.skipped_by_reason,
        "targets": counts.targets,
        "tokens": counts.tokens,
        "bytes": round(n_shards * shard_fixed + per_target * counts.targets),
        "bytes_per_target": per_target,
        "shard_fixed_bytes": shard_fixed,
        "shards": n_shards,
        "seconds": once_s + split_fixed + per_token * counts.tokens,
        "split_fixed_s": split_fixed,
        "seconds_per_1k_tokens": 1e3 * per_token,
    }


def run_dry_run(
    cfg: DistillConfig, split: str = "all", limit: int | None = None, measure_batches: int = 6
) -> dict[str, Any]:
    """``distill cache --dry-run``: print and return the expected size and time of each split."""
    from pipeline.encoding import RowEncoder
    from pipeline.fingerprint import model_dir_hash, teacher_path
    from pipeline.models import load_teacher, teacher_device_map
    from pipeline.teacher.compat import check_pair
    from pipeline.teacher.stage import plan_split
    from pipeline.versions import check_versions

    check_versions()
    if cfg.custom.trainer_variant != "gkd_cached" or not cfg.custom.teacher_cache:
        raise ConfigError("distill cache needs custom.trainer_variant: gkd_cached and custom.teacher_cache")
    check_pair(cfg)
    splits = (
        ["train", "val"]
        if split == "all" and cfg.data.val_dataset
        else [split if split != "all" else "train"]
    )
    bs, workers = cfg.custom.cache_batch_size, cfg.data.dataloader_num_workers
    plans = {s: plan_split(cfg, s, limit=limit) for s in splits}
    t0 = time.perf_counter()
    teacher = load_teacher(cfg, teacher_device_map())
    load_s = time.perf_counter() - t0
    encoder = RowEncoder.from_config(cfg)
    if encoder.template.use_model:
        encoder.template.model = teacher
    counts = {s: count_split(encoder, plans[s], bs, workers) for s in splits}
    t0 = time.perf_counter()
    model_dir_hash(teacher_path(cfg))  # paid once per run by the stage's fingerprint; cached after
    hash_s = time.perf_counter() - t0
    first = splits[0]
    rows_avail = counts[first].rows
    measure(cfg, first, teacher, encoder, min(bs, rows_avail))  # warm-up: kernels, allocator, imports
    runs = []
    for n in (min(bs, rows_avail), min(measure_batches * bs, rows_avail)):
        m = measure(cfg, first, teacher, encoder, n)
        m.tokens = sum(counts[first].tokens_by_row[: m.rows])
        runs.append(m)
    shard_bytes = int(cfg.custom.cache_shard_mb * 2**20) if cfg.custom.cache_shard_mb else 256 * 2**20
    out: dict[str, Any] = {"model_load_s": load_s, "teacher_hash_s": hash_s, "splits": {}}
    for i, s in enumerate(splits):
        p = predict(counts[s], runs[0], runs[1], shard_bytes, once_s=hash_s if i == 0 else 0.0)
        out["splits"][s] = p
        reasons = ", ".join(f"{k}: {v}" for k, v in p["skipped_by_reason"].items()) or "none"
        print(
            f"[dry-run {s}] rows {p['rows']}: would cache {p['cached']}, skip {p['rows'] - p['cached']} "
            f"({reasons}); {p['targets']} supervised targets, {p['tokens']} encoded tokens\n"
            f"[dry-run {s}] expected {p['bytes'] / 2**20:.2f} MiB in {p['shards']} shard(s) "
            f"({p['bytes_per_target']:.1f} B/target at k={cfg.custom.top_k}, "
            f"{cfg.custom.logprob_encoding}); expected {p['seconds']:.1f} s after the model is loaded"
        )
    print(
        f"[dry-run] measured on the first {runs[1].rows} rows of {first}: {runs[1].seconds:.2f} s; "
        f"model load {load_s:.1f} s (not in the estimates), teacher weight hash {hash_s:.1f} s"
    )
    return out
