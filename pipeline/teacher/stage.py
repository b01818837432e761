"""The cache stage: run the teacher once over a dataset split and store its top-k distributions.

Rows are encoded by the shared ``RowEncoder`` (the student's template, exactly as training will) in
dataloader workers; the teacher runs forward once per batch; every supervised target's top-k goes to
the cache writer. Bad rows are skipped with a recorded reason (``--strict`` makes any skip an error),
and rows in = cached + skipped always. The stage resumes after a kill: complete shards are kept and
only the samples not yet cached are processed. Under ``torchrun`` each rank caches ``rows[rank::world]``
into its own shards and rank 0 merges one manifest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.data import BadRow, Row, read_rows
from pipeline.errors import ConfigError, DataError
from pipeline.models import load_teacher, teacher_device_map
from pipeline.runs import split_file

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
                skipped.append((row.sample_id, getattr(exc, "reason", "encode_failed"), str(exc)))
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


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
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
) -> dict[str, Any]:
    """Cache one split into ``<teacher_cache>/<split>``; returns the writer's counts."""
    from tqdm import tqdm

    from pipeline.cache.writer import CacheWriter, merge_rank_manifests
    from pipeline.fingerprint import build_fingerprint
    from pipeline.teacher.forward import teacher_topk

    path = split_file(cfg, split)
    root = Path(cfg.custom.teacher_cache or "") / split
    rank, world = dist_info()
    all_rows = read_rows(path)[: limit or None]
    mine = all_rows[rank::world]
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
        todo: list[Row] = []
        for r in mine:
            if r.sample_id in done:
                continue
            if isinstance(r, BadRow):
                if strict:
                    raise DataError(f"{r.source}: sample {r.sample_id!r}: {r.reason}: {r.detail}")
                writer.skip(r.sample_id, r.reason, f"{r.source}: {r.detail}")
            else:
                todo.append(r)
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
                    _to_device(item["batch"], device),
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
        bar.close()
        counts = writer.finalize(rows_in=len(mine))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank == 0:
            counts = merge_rank_manifests(root)
        dist.barrier()
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
    if cfg.custom.trainer_variant != "gkd_cached" or not cfg.custom.teacher_cache:
        raise ConfigError("distill cache needs custom.trainer_variant: gkd_cached and custom.teacher_cache")
    check_pair(cfg)
    teacher = load_teacher(cfg, teacher_device_map())
    encoder = RowEncoder.from_config(cfg)
    if encoder.template.use_model:
        encoder.template.model = teacher  # the template computes rope position ids with the model
    splits = ["train", "val"] if split == "all" else [split]
    if split == "all" and not cfg.data.val_dataset:
        splits = ["train"]
    results = {}
    for s in splits:
        counts = cache_split(cfg, s, teacher, encoder, strict=strict, limit=limit, progress=progress)
        results[s] = counts
        rank, _ = dist_info()
        if rank == 0:
            reasons = ", ".join(f"{k}: {v}" for k, v in counts.get("skipped_by_reason", {}).items()) or "none"
            print(
                f"[cache {s}] rows in {counts.get('rows_in')}, cached {counts.get('cached')}, "
                f"skipped {counts.get('skipped')} ({reasons})"
            )
    return results


def bench_cache_write(cfg: DistillConfig, limit: int | None = None, rounds: int = 3) -> dict[str, Any]:
    """``distill bench cache-write``: the full cache stage vs a bare teacher loop over the same rows.

    The bare loop uses the same dataloader, encoding and teacher forward (``model(**batch)``, the
    forward any teacher run pays) with no top-k extraction and no writing. Both run in this process,
    alternately for ``rounds`` rounds after one warm-up batch; each side's median is reported. Prints one
    JSON line last.
    """
    import json
    import statistics
    import tempfile
    from dataclasses import replace

    from pipeline.encoding import RowEncoder

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
                    batch = _to_device(item["batch"], device)
                    teacher(**{k: v for k, v in batch.items() if k not in ("labels", "text_position_ids")})
                    n += int((batch["labels"][:, 1:] != -100).sum())
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
    print(
        f"bare teacher loop {forward_s:.2f} s | cache stage {cache_s:.2f} s | ratio {cache_s / forward_s:.3f} "
        f"| {tokens} supervised tokens"
    )
    print(json.dumps(out))
    return out
