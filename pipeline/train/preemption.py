"""SIGTERM is a clean stop: the run saves a checkpoint at the end of the step it is in and exits.

A cluster preempts a job by sending SIGTERM, then SIGKILL after a grace period. The handler only sets
a flag (a signal can arrive anywhere, mid-forward or mid-save); at the next optimizer step's end
:class:`PreemptionCallback` asks the Trainer to save and stop (``control.should_save``,
``control.should_training_stop``), the Trainer writes ``checkpoint-N`` as at any save step, and
``DistillSft.train`` raises :class:`TrainingStopped`: one line naming the checkpoint and the resume
key, exit code 2, no ``final/`` weights (the DVC stage did not finish). Under DDP the flag is reduced
over ranks at every step end, so all ranks stop at the same step (a rank that saved alone would hang
in the save's collectives). A kill that comes before the save finishes leaves a partial checkpoint,
which the resume recognises (``pipeline.train.checkpoints``).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from transformers import TrainerCallback

from pipeline.errors import DistillError

STOP_SIGNALS = (signal.SIGTERM,)


class TrainingStopped(DistillError, RuntimeError):
    """A signal stopped training after a checkpoint was saved; the message says how to resume."""


class PreemptionCallback(TrainerCallback):
    """Turns SIGTERM into save-and-stop at the next step end; ``stopped_at`` is that step (else None)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None  # set by the handler
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}
        self._best: str | None = None  # state.best_model_checkpoint, hidden from the finalisation

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._requested(args):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = int(state.global_step)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stopped_at is not None and state.best_model_checkpoint is not None:
            # Hidden until on_train_end: the Trainer's finalisation would otherwise load the best
            # model and, with save_total_limit 1, delete the checkpoint just saved to resume from.
            self._best, state.best_model_checkpoint = state.best_model_checkpoint, None

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._best is not None:
            state.best_model_checkpoint, self._best = self._best, None
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _requested(self, args: Any) -> bool:
        from pipeline.dist import any_rank

        asked = any_rank(self.signal_name is not None)  # every rank stops at the same step
        if asked and self.signal_name is None:
            self.signal_name = "SIGTERM (on another rank)"
        return asked
