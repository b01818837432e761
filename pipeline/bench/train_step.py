"""``distill bench train-step``: optimizer-step time and peak memory of SFT, cached GKD and live GKD.

One subprocess per mode and round (peak RSS only grows within a process), same student, data, batch
size, dataloader settings, seed and number of steps:

- ``sft``: our CE trainer (ms-swift's SFT trainer path);
- ``cached``: GKD against the teacher cache, ``lmbda = 0`` (the teacher is never loaded);
- ``live``: stock ms-swift ``GKDTrainer`` with the same teacher, ``lmbda = 0`` (only the template's
  image placeholder ids are set from the tokenizer, as everywhere in this project).

The modes alternate over ``rounds`` (round r runs them in the order rotated by r), so a slow phase of
a shared machine falls on every mode alike; each run's step time is its median after ``warmup`` steps,
the reported times are medians over rounds and the ratios are medians of the per-round ratios.
Outputs go to ``--out`` (default ``runs/bench/train_step``, not a DVC output). The last line printed
is one JSON object.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import DistillConfig

log = logging.getLogger(__name__)

MODES = ("sft", "cached", "live")
DEFAULT_OUT = Path("runs/bench/train_step")  # not a DVC output: benches never touch stage outputs


def _step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t = 0.0
            self.train_s = 0.0  # the whole loop: data loading, steps, logging

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.train_s = -time.perf_counter()

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.train_s += time.perf_counter()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._t = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.times.append(time.perf_counter() - self._t)

    return StepTimer()


def _bench_overrides(steps: int, out: str) -> dict[str, Any]:
    return {
        "train.max_steps": steps,
        "train.output_dir": out,
        "train.logging_steps": steps,
        "train.save_steps": 10 * steps,
        "train.eval_steps": 10 * steps,
        "data.val_dataset": [],
        "train.report_to": ["none"],
    }


def _count_encodes() -> list[int]:
    """Count the row encodings this process makes from now on (this bench's own subprocess: the
    encoder's method is wrapped for its lifetime; rows encoded in dataloader workers count there)."""
    from pipeline.encoding import RowEncoder

    count = [0]
    real = RowEncoder.encode

    def counting(self: RowEncoder, *args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return real(self, *args, **kwargs)

    RowEncoder.encode = counting  # type: ignore[method-assign]
    return count


def run_mode(config: Path, mode: str, steps: int, out: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train ``steps`` steps in this process in one mode; return median step time and peak RSS."""
    from pipeline.config import load_config

    ov = {**overrides, **_bench_overrides(steps, out)}
    timer = _step_timer()
    encodes = _count_encodes()
    if mode == "live":
        ov["custom.trainer_variant"] = "gkd_monitor"
        ov["custom.teacher_cache"] = None
        cfg = load_config(config, overrides=ov)
        # ms-swift's own loader resolves image paths against the working directory: hand it the same
        # rows with absolute paths.
        ov["data.dataset"] = [str(_absolute_copy(cfg.data.dataset[0], Path(out)))]
        cfg = load_config(config, overrides=ov)
        _run_stock_gkd(cfg, timer)
    else:
        if mode == "sft":
            ov["custom.trainer_variant"] = "sft"
            ov["rlhf"] = None
        cfg = load_config(config, overrides=ov)
        _run_ours(cfg, timer)
    warm = min(2, max(len(timer.times) - 1, 0))
    times = timer.times[warm:]
    return {
        "encodes": encodes[0],
        "mode": mode,
        "steps": len(timer.times),
        "step_s": statistics.median(times) if times else float("nan"),
        "train_s": timer.train_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _absolute_copy(src: str, out_dir: Path) -> Path:
    from pipeline.data import Row, read_rows

    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / "train_abs.jsonl"
    with dst.open("w", encoding="utf-8") as fh:
        for r in read_rows(src):
            if isinstance(r, Row):
                fh.write(json.dumps({"messages": r.messages, "images": r.images}) + "\n")
    return dst


def _run_ours(cfg: DistillConfig, timer: Any) -> None:
    from pipeline.train.launcher import training_splits
    from pipeline.train.sft_pipeline import DistillSft
    from pipeline.train.swift_args import swift_run_args

    args = swift_run_args(cfg, "sft")

    class Timed(DistillSft):
        def train(self, trainer: Any) -> Any:
            trainer.add_callback(timer)
            return super().train(trainer)

    Timed(args, cfg, training_splits(cfg)).main()


def _run_stock_gkd(cfg: DistillConfig, timer: Any) -> None:
    from swift.pipelines.train.rlhf import SwiftRLHF

    from pipeline.encoding import fix_placeholder_ids
    from pipeline.train.swift_args import swift_run_args

    args = swift_run_args(cfg, "rlhf")

    class StockGKD(SwiftRLHF):
        def _prepare_template(self) -> None:
            super()._prepare_template()
            fix_placeholder_ids(self.template, self.processor.tokenizer)

        def train(self, trainer: Any) -> Any:
            trainer.add_callback(timer)
            return super().train(trainer)

    StockGKD(args).main()


def bench_train_step(
    cfg: DistillConfig,
    steps: int = 20,
    config_path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    rounds: int = 3,
    out: Path = DEFAULT_OUT,
) -> dict[str, Any]:
    """Run every mode in its own subprocess, alternating over rounds; log a table; return the summary."""
    config_path = Path(config_path or cfg.source_files[-1])
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for r in range(rounds):
        for mode in MODES[r % len(MODES) :] + MODES[: r % len(MODES)]:
            runs[mode].append(run_subprocess(config_path, mode, steps, Path(out) / f"r{r}" / mode, overrides))
    for m in MODES:
        times = " ".join(f"{x['step_s']:.4f}" for x in runs[m])
        rss = statistics.median(x["peak_rss_mb"] for x in runs[m])
        log.info("%-7s step s per round [%s]   median peak RSS %.0f MB", m, times, rss)

    def med(mode: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[mode])

    def ratio(a: str, b: str) -> list[float]:
        return [x["step_s"] / y["step_s"] for x, y in zip(runs[a], runs[b], strict=True)]

    summary = {
        "sft_step_s": med("sft", "step_s"),
        "cached_step_s": med("cached", "step_s"),
        "live_step_s": med("live", "step_s"),
        "cached_over_sft": statistics.median(ratio("cached", "sft")),
        "live_over_cached": statistics.median(ratio("live", "cached")),
        "sft_peak_rss_mb": med("sft", "peak_rss_mb"),
        "cached_peak_rss_mb": med("cached", "peak_rss_mb"),
        "live_peak_rss_mb": med("live", "peak_rss_mb"),
        "cached_over_sft_rounds": ratio("cached", "sft"),
        "rounds": rounds,
    }
    return summary


def run_subprocess(
    config_path: Path, mode: str, steps: int, out: Path, overrides: dict[str, Any] | None
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "pipeline.bench.train_step",
        str(config_path),
        mode,
        str(steps),
        str(out),
        json.dumps(overrides or {}),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{") and '"mode"' in ln]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench mode {mode} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return dict(json.loads(lines[-1]))


if __name__ == "__main__":
    config, mode, n_steps, out_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    # the worker's one result line, read by the parent from stdout
    sys.stdout.write(json.dumps(run_mode(Path(config), mode, n_steps, out_dir, extra)) + "\n")
