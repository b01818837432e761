"""TensorBoard and DVCLive sinks for the canonical metric names.

The trainers log canonical names (``train/loss``, ``eval/sft_loss``...). transformers' own
TensorBoard/DVCLive callbacks prefix every key again (``train/train/loss``), so the trainers remove
them and this callback writes the names as they are. ms-swift's ``logging.jsonl`` receives the same
dict, so the three sinks agree.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

if TYPE_CHECKING:
    from pipeline.config import DistillConfig

# Keys written to the metric sinks: the canonical names and the trainer's bookkeeping.
_BOOKKEEPING = ("learning_rate", "grad_norm", "epoch")


def _is_metric(key: str) -> bool:
    return key.startswith(("train/", "eval/")) or key in _BOOKKEEPING


class TelemetryCallback(TrainerCallback):
    """Writes canonical metrics to TensorBoard (``<output_dir>/runs``) and DVCLive (``<output_dir>/dvclive``)."""

    def __init__(self, cfg: DistillConfig):
        self.report_to = set(cfg.train.report_to or [])
        self.output_dir = cfg.train.output_dir
        self._tb: Any = None
        self._live: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        if "tensorboard" in self.report_to and self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=os.path.join(self.output_dir, "runs"))
        if "dvclive" in self.report_to and self._live is None:
            from dvclive import Live

            self._live = Live(os.path.join(self.output_dir, "dvclive"), save_dvc_exp=False, dvcyaml=None)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        metrics = {
            k: float(v)
            for k, v in logs.items()
            if _is_metric(k) and isinstance(v, (int, float)) and math.isfinite(float(v))
        }
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, state.global_step)
            self._tb.flush()
        if self._live is not None and metrics:
            self._live.step = state.global_step
            for k, v in metrics.items():
                self._live.log_metric(k, v)
            self._live.next_step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._live is not None:
            self._live.end()
            self._live = None
