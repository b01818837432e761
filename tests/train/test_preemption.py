"""SIGTERM becomes save-and-stop at the next step end (the end-to-end run is in
tests/integration/test_train_faults.py)."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

from transformers import TrainerControl

from pipeline.train.preemption import PreemptionCallback


def test_sigterm_asks_the_trainer_to_save_and_stop_at_the_step_end() -> None:
    cb = PreemptionCallback()
    args, state, control = SimpleNamespace(device="cpu"), SimpleNamespace(global_step=3), TrainerControl()
    before = signal.getsignal(signal.SIGTERM)
    cb.on_train_begin(args, state, control)
    try:
        cb.on_step_end(args, state, control)
        assert not control.should_save and not control.should_training_stop and cb.stopped_at is None
        os.kill(os.getpid(), signal.SIGTERM)  # handled: only a flag is set
        assert cb.signal_name == "SIGTERM"
        cb.on_step_end(args, state, control)
        assert control.should_save and control.should_training_stop and cb.stopped_at == 3
        state.best_model_checkpoint = "out/checkpoint-2"
        cb.on_save(args, state, control)
        assert state.best_model_checkpoint is None  # finalisation must not delete the one just saved
    finally:
        cb.on_train_end(args, state, control)
    assert signal.getsignal(signal.SIGTERM) == before
    assert state.best_model_checkpoint == "out/checkpoint-2"  # restored for ms-swift's summary
