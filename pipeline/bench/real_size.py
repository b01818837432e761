"""``distill bench real-size``: check, cache, a training step and evaluation at the real architectures'
shapes, each job in its own subprocess, with its peak RSS beside what the guide's arithmetic predicts.

Meant for ``configs/real_size/stage_2_llm_lora_gkd.yaml`` over the models of ``distill real-size-assets``
(``--depth reduced``: real widths and vocabulary, 2 LLM layers; ``--depth full``: the published depth).
Each job is ``distill <job> --config ...`` as a user runs it; ``os.wait4`` gives that process's own
peak RSS. Seconds are the job's whole wall-clock (interpreter start and model load included: at
reduced depth and a few rows they dominate), per row and per supervised token. The cache's bytes per
token are its shard bytes over its supervised targets, at the real vocabulary width.

The prediction is the guide's memory arithmetic ("Estimates") for the same models and batch, without
its activation terms: bf16 weights, plus for the cache the fp32 head copy and three fp32
``[supervised tokens, vocab]`` logit copies of one ``cache_batch_size`` forward, plus for training the
LoRA parameters at 16 B each (weight, gradient, two AdamW moments). The last line printed is one JSON
object.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.cache.cachedir import CacheDir

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("runs/bench/real_size")  # not a DVC output
JOBS = ("check", "cache", "train", "evaluate")
GB = 1e9


def run_job(argv: list[str], log_path: Path) -> dict[str, float]:
    """``python -m pipeline.cli *argv`` in a subprocess (output to ``log_path``): its wall seconds and
    its own peak RSS in GB. ``RuntimeError`` with the log's tail when it fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *argv], stdout=out, stderr=subprocess.STDOUT, env=env
        )
        # wait4, not wait: the rusage of this child alone (RUSAGE_CHILDREN would be the max over all).
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"`distill {' '.join(argv)}` exited {proc.returncode}:\n{tail}")
    return {"wall_s": wall, "peak_rss_gb": usage.ru_maxrss * 1024 / GB}  # ru_maxrss is KiB on Linux


def model_shape(model_dir: Path) -> dict[str, Any]:
    """Widths, depth, tie flag and bf16 weight bytes of a saved Qwen2.5-VL directory."""
    raw = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    text = raw.get("text_config", raw)
    weight_bytes = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    return {
        "hidden": text["hidden_size"],
        "intermediate": text["intermediate_size"],
        "layers": text["num_hidden_layers"],
        "kv_dim": text["num_key_value_heads"] * text["hidden_size"] // text["num_attention_heads"],
        "vocab": text["vocab_size"],
        "tied": bool(raw.get("tie_word_embeddings")),
        "weight_bytes": weight_bytes,
    }


def lora_parameters(shape: dict[str, Any], rank: int) -> int:
    """LoRA parameters on every linear layer of the LLM: ``rank * (in + out)`` per projection."""
    h, kv, i = shape["hidden"], shape["kv_dim"], shape["intermediate"]
    per_layer = (h + h) * 2 + (h + kv) * 2 + (h + i) * 2 + (i + h)  # q, o; k, v; gate, up; down
    return rank * per_layer * shape["layers"]


def predicted_gb(
    job: str, cfg: Any, teacher: dict[str, Any], student: dict[str, Any], tokens_per_row: float
) -> float:
    """The guide's arithmetic for ``job`` (module docstring), in GB."""
    if job == "check":
        return 0.0  # processors only, no weights
    if job == "cache":
        supervised = cfg.custom.cache_batch_size * tokens_per_row
        head = teacher["vocab"] * teacher["hidden"] * 4
        return (teacher["weight_bytes"] + head + 3 * supervised * teacher["vocab"] * 4) / GB
    lora = lora_parameters(student, cfg.train.lora_rank) * 16 if job == "train" else 0
    return (student["weight_bytes"] + lora) / GB


def bench_real_size(
    config_path: Path, sets: list[str] | None = None, steps: int = 1, out: Path = DEFAULT_OUT
) -> dict[str, Any]:
    """Run the four jobs on ``config_path`` (``sets``: its ``--set KEY=VALUE`` strings) with the cache
    and run directory under ``out`` (replaced); log the table, return the summary."""
    from pipeline.config import load_config, model_location, parse_override
    from pipeline.fingerprint import teacher_path

    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    own = [
        f"custom.teacher_cache={out / 'cache'}",
        f"train.output_dir={out / 'run'}",
        f"train.max_steps={steps}",
    ]
    all_sets = [*(sets or []), *own]
    cfg = load_config(config_path, overrides=dict(parse_override(s) for s in all_sets))
    base = ["--config", str(config_path), *(a for s in all_sets for a in ("--set", s))]
    teacher = model_shape(Path(teacher_path(cfg)))
    student = model_shape(Path(model_location(cfg.model.model, "model.model", cfg.config_path)))

    jobs: dict[str, dict[str, Any]] = {}
    timing = run_job(["check", *base], out / "check.log")
    checked = re.search(r"(\d+) rows encode identically", (out / "check.log").read_text(encoding="utf-8"))
    jobs["check"] = {**timing, "rows": int(checked.group(1)) if checked else 0, "tokens": None}

    timing = run_job(["cache", *base], out / "cache.log")
    splits = [CacheDir.of(cfg).split(name).manifest() for name in ("train", "val")]
    rows = sum(int(m.counts.get("cached", 0) or 0) for m in splits)
    targets = sum(m.targets for m in splits)
    jobs["cache"] = {**timing, "rows": rows, "tokens": targets}
    bytes_per_token = sum(m.shard_bytes for m in splits) / max(targets, 1)
    train_split = splits[0]
    tokens_per_row = train_split.targets / max(int(train_split.counts.get("cached", 0) or 0), 1)

    timing = run_job(["train", *base], out / "train.log")
    trained = steps * cfg.train.per_device_train_batch_size * cfg.train.gradient_accumulation_steps
    jobs["train"] = {**timing, "rows": trained, "tokens": round(trained * tokens_per_row)}

    metrics_path = out / "metrics.json"
    timing = run_job(["evaluate", *base, "--out", str(metrics_path)], out / "evaluate.log")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    jobs["evaluate"] = {**timing, "rows": metrics["rows_scored"], "tokens": metrics["tokens"]}

    for job, row in jobs.items():
        row["predicted_gb"] = predicted_gb(job, cfg, teacher, student, tokens_per_row)
        row["s_per_row"] = row["wall_s"] / row["rows"] if row["rows"] else None
        row["s_per_token"] = row["wall_s"] / row["tokens"] if row["tokens"] else None
    _log_table(jobs, bytes_per_token)
    return {
        "teacher": {k: teacher[k] for k in ("layers", "hidden", "vocab", "tied")},
        "student": {k: student[k] for k in ("layers", "hidden", "vocab", "tied")},
        "cache_bytes_per_token": bytes_per_token,
        "jobs": jobs,
    }


def _log_table(jobs: dict[str, dict[str, Any]], bytes_per_token: float) -> None:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    log.info(
        "%-9s %10s %13s %8s %9s %11s %5s %7s",
        "job",
        "peak GB",
        "guide GB",
        "wall s",
        "s/row",
        "s/token",
        "rows",
        "tokens",
    )
    for job, r in jobs.items():
        log.info(
            "%-9s %10.2f %13.2f %8.1f %9s %11s %5d %7s",
            job,
            r["peak_rss_gb"],
            r["predicted_gb"],
            r["wall_s"],
            fmt(r["s_per_row"], ".1f"),
            fmt(r["s_per_token"], ".3f"),
            r["rows"],
            "-" if r["tokens"] is None else r["tokens"],
        )
    log.info("cache: %.1f bytes per supervised token", bytes_per_token)
