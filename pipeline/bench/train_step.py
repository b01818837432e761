"""``distill bench train-step``: optimizer-step time and peak memory of SFT, cached GKD and live GKD.

One subprocess per mode (peak RSS only grows within a process), same student, data, batch size,
dataloader settings, seed and number of steps:

- ``sft``: our CE trainer (ms-swift's SFT trainer path);
- ``cached``: GKD against the teacher cache, ``lmbda = 0`` (the teacher is never loaded);
- ``live``: stock ms-swift ``GKDTrainer`` with the same teacher, ``lmbda = 0`` (only the template's
  image placeholder ids are set from the tokenizer, as everywhere in this project).

The median step time skips the first ``warmup`` steps. The last line printed is one JSON object.
"""

from __future__ import annotations

import json
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

MODES = ("sft", "cached", "live")


def _step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t = 0.0

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


def run_mode(config: Path, mode: str, steps: int, out: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train ``steps`` steps in this process in one mode; return median step time and peak RSS."""
    from pipeline.config import load_config

    ov = {**overrides, **_bench_overrides(steps, out)}
    timer = _step_timer()
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
        "mode": mode,
        "steps": len(timer.times),
        "step_s": statistics.median(times) if times else float("nan"),
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
    from pipeline.train.launcher import _make_pipeline_cls
    from pipeline.train.swift_args import swift_run_args

    args = swift_run_args(cfg, "sft")
    cls = _make_pipeline_cls()

    class Timed(cls):  # type: ignore[misc, valid-type]
        def train(self, trainer: Any) -> Any:
            trainer.add_callback(timer)
            return super().train(trainer)

    Timed(args, cfg).main()


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
) -> dict[str, Any]:
    """Run every mode in its own subprocess and print a side-by-side table and one JSON line."""
    config_path = Path(config_path or cfg.source_files[-1])
    base_out = Path(cfg.train.output_dir) / "bench_train_step"
    results: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        cmd = [
            sys.executable,
            "-m",
            "pipeline.bench.train_step",
            str(config_path),
            mode,
            str(steps),
            str(base_out / mode),
            json.dumps(overrides or {}),
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{") and '"mode"' in ln]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"bench mode {mode} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        results[mode] = json.loads(lines[-1])
    for m in MODES:
        r = results[m]
        print(
            f"{m:7s} median step {r['step_s']:.4f} s   peak RSS {r['peak_rss_mb']:.0f} MB   ({r['steps']} steps)"
        )
    summary = {
        "sft_step_s": results["sft"]["step_s"],
        "cached_step_s": results["cached"]["step_s"],
        "live_step_s": results["live"]["step_s"],
        "cached_over_sft": results["cached"]["step_s"] / results["sft"]["step_s"],
        "live_over_cached": results["live"]["step_s"] / results["cached"]["step_s"],
        "sft_peak_rss_mb": results["sft"]["peak_rss_mb"],
        "cached_peak_rss_mb": results["cached"]["peak_rss_mb"],
        "live_peak_rss_mb": results["live"]["peak_rss_mb"],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    config, mode, n_steps, out_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    print(json.dumps(run_mode(Path(config), mode, n_steps, out_dir, extra)))
