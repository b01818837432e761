"""Student training against the cache: equivalence with the live teacher, telemetry, refusals,
on-policy draws and resume. Runs the real ms-swift trainer on the tiny models."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow  # trains or caches with real tiny models

REQUIRED = {
    "train/loss",
    "train/kl_loss",
    "train/sft_loss",
    "train/token_accuracy",
    "eval/loss",
    "eval/sft_loss",
    "eval/token_accuracy",
    "eval/kl_loss",
}
BOOKKEEPING = {
    "learning_rate",
    "grad_norm",
    "epoch",
    "global_step/max_steps",
    "elapsed_time",
    "remaining_time",
    "train_speed(s/it)",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "total_flos",
    "train_loss",
    "memory(GiB)",
    "train/live_fraction",
}


def _load(path: Path, **overrides: Any) -> Any:
    from pipeline.config import load_config

    return load_config(path, overrides=overrides or None)


def _batch(cfg: Any, cache_split: Path, n: int = 4) -> tuple[Any, dict[str, Any]]:
    from pipeline.cache.reader import CacheReader
    from pipeline.encoding import RowEncoder
    from pipeline.train.coverage import load_split
    from pipeline.train.data import DistillCollator, EncodedDataset

    enc = RowEncoder.from_config(cfg)
    reader = CacheReader(cache_split)
    rows = [r for r in load_split("train", cfg.data.dataset).rows if r.sample_id in reader][:n]
    ds = EncodedDataset(rows, enc, reader)
    return enc, DistillCollator(enc.template.data_collator)([ds[i] for i in range(len(ds))])


def _models(cfg: Any, lora: bool) -> tuple[Any, Any]:
    from swift.model import get_model_processor

    from pipeline.models import load_teacher

    student, _ = get_model_processor(cfg.model.model, model_type="qwen2_5_vl", torch_dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        student = get_peft_model(
            student,
            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        )
    return student, load_teacher(cfg)


def _bare_trainer(cls: type, settings: Any, teacher: Any = None) -> Any:
    """A trainer instance with only what ``compute_loss`` reads (no ms-swift setup, no data)."""
    from collections import defaultdict
    from types import SimpleNamespace

    from swift.metrics.utils import MeanMetric

    trainer = cls.__new__(cls)
    trainer.distill, trainer.teacher_model, trainer.on_policy_draws = settings, teacher, []
    trainer.args = SimpleNamespace(average_tokens_across_devices=False)
    trainer.custom_metrics = {
        m: defaultdict(lambda: MeanMetric(nan_value=None, device="cpu")) for m in ("train", "eval")
    }
    return trainer


def _loss_and_grads(trainer: Any, student: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """One training ``compute_loss`` + backward of the real trainer on a copy of the batch."""
    student.train()
    student.zero_grad()
    loss = trainer.compute_loss(student, dict(batch))
    loss.backward()
    grads = torch.cat(
        [p.grad.flatten() for p in student.parameters() if p.requires_grad and p.grad is not None]
    )
    return loss.detach(), grads


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_cached_path_equals_live_path_with_exact_cache(exact_cache: Path, lora: bool) -> None:
    """CachedGKDTrainer (k = whole vocabulary, fp32 cache) and LiveGKDTrainer give the same loss and
    gradients through their own ``compute_loss`` (fused head + loss), for every beta."""
    from pipeline.train.trainer import CachedGKDTrainer, DistillSettings, LiveGKDTrainer

    cfg = _load(exact_cache)
    enc, batch = _batch(cfg, Path(cfg.custom.teacher_cache) / "train")
    batch.pop("sample_ids", None)
    base, teacher = _models(cfg, lora)
    enc.template.model = base
    for beta in (0.0, 0.5, 1.0):
        st = DistillSettings(beta=beta, real_vocab=len(enc.tokenizer))
        cached_tr = _bare_trainer(CachedGKDTrainer, st)
        live_tr = _bare_trainer(LiveGKDTrainer, st, teacher)
        cached, live = copy.deepcopy(base), copy.deepcopy(base)
        for _ in range(2):  # the first steps: each copy takes an SGD step with its own gradient
            lc, gc = _loss_and_grads(cached_tr, cached, batch)
            ll, gl = _loss_and_grads(live_tr, live, batch)
            assert abs(float(lc - ll)) <= 1e-4 * abs(float(ll)) + 1e-9, (beta, float(lc), float(ll))
            assert float((gc - gl).norm() / gl.norm()) <= 1e-4, beta
            with torch.no_grad():
                for m in (cached, live):
                    for p in m.parameters():
                        if p.grad is not None:
                            p -= 0.5 * p.grad
        assert cached_tr.custom_metrics["train"]["kl_loss"].count > 0


def test_fused_student_scores_equal_the_dense_head(default_cache: Path) -> None:
    """The hidden states the fused path reads give the model's own logits (ms-swift forward, real model)."""
    from pipeline.train import losses
    from pipeline.train.student_forward import student_token_scores

    cfg = _load(default_cache)
    enc, batch = _batch(cfg, Path(cfg.custom.teacher_cache) / "train")
    inputs = {k: v for k, v in batch.items() if k not in ("teacher", "sample_ids")}
    student, _ = _models(cfg, lora=False)
    real = len(enc.tokenizer)
    with torch.no_grad():
        dense, targets = losses.supervised_logits(
            student(**{k: v for k, v in inputs.items() if k != "labels"}).logits, inputs["labels"]
        )
        scores = student_token_scores(student, inputs, real_vocab=real)
    assert torch.equal(scores.targets, targets) and targets.numel() > 0
    ce = losses.cross_entropy(dense[:, :real], targets, reduction="none")
    torch.testing.assert_close(scores.tokens.ce, ce, rtol=1e-5, atol=1e-5)
    assert torch.equal(scores.tokens.correct, dense[:, :real].argmax(-1) == targets)
    assert scores.outputs.logits.shape[1] == 1  # the model's own head ran on one position per row
    assert "hidden_states" not in scores.outputs  # callers (prediction_step) never gather them


def test_topk16_loss_never_exceeds_live(default_cache: Path, record_property: Any) -> None:
    from pipeline.cache.targets import teacher_topk
    from pipeline.forward import hidden_states, project_fp32
    from pipeline.train.student_forward import student_token_scores
    from pipeline.train.trainer import DistillSettings

    cfg = _load(default_cache)
    enc, batch = _batch(cfg, Path(cfg.custom.teacher_cache) / "train", n=8)
    inputs = {k: v for k, v in batch.items() if k not in ("teacher", "sample_ids")}
    student, teacher = _models(cfg, lora=False)
    b, j = (inputs["labels"][:, 1:] != -100).nonzero(as_tuple=True)
    targets = inputs["labels"][:, 1:][inputs["labels"][:, 1:] != -100]
    with torch.no_grad():
        t_logits = project_fp32(teacher, hidden_states(teacher, inputs)[b, j])
    gaps = []
    for beta in (0.0, 0.5, 1.0):
        st = DistillSettings(beta=beta, real_vocab=len(enc.tokenizer))
        kw = dict(real_vocab=st.real_vocab, beta=beta)
        with torch.no_grad():
            topk = teacher_topk(batch["teacher"], targets, st.real_vocab)
            sparse = student_token_scores(student, inputs, topk=topk, **kw).tokens.kl
            full = student_token_scores(student, inputs, teacher_logits=t_logits, **kw).tokens.kl
        # the loss (mean over the batch's tokens) never exceeds the live loss
        assert float(sparse.mean()) <= float(full.mean()) + 1e-6, beta
        # per token too, up to the default encoding's quantisation of the teacher values
        assert (sparse <= full + 1e-6 + 1e-3 * full.abs()).all(), beta
        gaps.append((beta, float(full.mean()), float(sparse.mean())))
    record_property("k16_gap", json.dumps(gaps))
    print("k=16 vs live (beta, live mean, k16 mean):", gaps)


def _log_records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "logging.jsonl").read_text().splitlines() if x.strip()]


def test_cached_run_telemetry_lora_and_no_teacher(
    default_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.train.launcher as launcher
    import pipeline.train.sft_pipeline as sft_pipeline
    from pipeline.train.trainer import CachedGKDTrainer

    def no_teacher(*a: Any, **k: Any) -> None:
        raise AssertionError("the cached variant with lmbda=0 must not load a teacher")

    monkeypatch.setattr(sft_pipeline, "load_teacher", no_teacher)
    monkeypatch.setattr(CachedGKDTrainer, "_live_teacher_logits", no_teacher)
    out = tmp_path / "run"
    launcher.run_training(
        _load(
            default_cache,
            **{
                "train.output_dir": str(out),
                "train.tuner_type": "lora",
                "train.lora_rank": 4,
                "train.learning_rate": 1e-3,
                "train.report_to": ["tensorboard", "dvclive"],
            },
        )
    )
    records = [r for r in _log_records(out) if "log_history" not in r]
    keys = set().union(*records)
    assert keys >= REQUIRED
    assert keys <= REQUIRED | BOOKKEEPING, keys - REQUIRED - BOOKKEEPING
    for k in keys:  # never eval_eval/..., train/train/..., nor a raw duplicate
        assert not k.startswith(("eval_eval", "train/train", "eval/eval")) and k not in (
            "loss",
            "eval_loss",
            "token_acc",
        )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "runs"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags >= REQUIRED and not any(t.startswith(("train/train", "eval/eval")) for t in tags)
    live_files = {
        str(p.relative_to(out / "dvclive" / "plots" / "metrics"))
        for p in (out / "dvclive" / "plots" / "metrics").rglob("*.tsv")
    }
    assert {f"{k}.tsv" for k in REQUIRED} <= live_files
    assert (out / "final" / "adapter_config.json").is_file()


def test_cache_for_other_settings_is_refused_before_training(
    default_cache: Path, demo_assets: dict[str, Path], tmp_path: Path
) -> None:
    from pipeline.errors import CacheMismatchError
    from pipeline.train.launcher import run_training

    cases = {
        "encoding.template.max_length": {"data.max_length": 384},
        "encoding.template.default_system": {"data.system": "You describe images."},
        "teacher.weights_sha256": {"rlhf.teacher_model": str(demo_assets["teacher"])},
    }
    for field, ov in cases.items():
        with pytest.raises(CacheMismatchError) as err:
            run_training(_load(default_cache, **{"train.output_dir": str(tmp_path / "x"), **ov}))
        assert field in str(err.value), (field, str(err.value))
        assert not (tmp_path / "x" / "logging.jsonl").exists()


def test_on_policy_draws_follow_the_seeded_sequence(
    demo_assets: dict[str, Path], tiny_teacher: Path, default_cache: Path, tmp_path: Path
) -> None:
    from pipeline.train.launcher import run_training

    cfg = _load(
        default_cache,
        **{
            "train.output_dir": str(tmp_path / "run"),
            "rlhf.lmbda": 0.5,
            "rlhf.max_completion_length": 4,
            "train.max_steps": 6,
            "train.eval_steps": 100,
            "train.save_steps": 100,
        },
    )
    run_training(cfg)
    logged = {
        int(r["global_step/max_steps"].split("/")[0]): r["train/live_fraction"]
        for r in _log_records(tmp_path / "run")
        if "train/live_fraction" in r
    }
    seed = cfg.train.seed
    expected = {s: float(random.Random(seed + s - 1).random() < 0.5) for s in range(1, 7)}
    assert logged == expected
    assert 0 < sum(expected.values()) < 6  # both sources were used


def test_resume_from_checkpoint_continues_the_run(default_cache: Path, tmp_path: Path) -> None:
    from pipeline.train.launcher import run_training

    common = {
        "train.max_steps": 4,
        "train.save_steps": 2,
        "train.save_total_limit": None,
        "train.eval_steps": 100,
        "train.lr_scheduler_type": "linear",
    }
    run_training(_load(default_cache, **{"train.output_dir": str(tmp_path / "a"), **common}))
    run_training(
        _load(
            default_cache,
            **{
                "train.output_dir": str(tmp_path / "b"),
                **common,
                "train.extra": {"resume_from_checkpoint": str(tmp_path / "a" / "checkpoint-2")},
            },
        )
    )

    def losses(run: Path) -> dict[int, float]:
        return {
            int(r["global_step/max_steps"].split("/")[0]): r["train/loss"]
            for r in _log_records(run)
            if "train/loss" in r
        }

    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert set(b) == {3, 4}
    np.testing.assert_allclose([b[3], b[4]], [a[3], a[4]], rtol=1e-5)


def test_lmbda_one_is_fully_on_policy(
    default_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lmbda=1: every step samples with the student and is scored by the live teacher (no CE term)."""
    from pipeline.train.launcher import run_training
    from pipeline.train.trainer import CachedGKDTrainer

    seen: list[int] = []
    original = CachedGKDTrainer._on_policy_inputs

    def spy(self: Any, model: Any, rows: Any) -> Any:
        seen.append(len(rows))
        return original(self, model, rows)

    monkeypatch.setattr(CachedGKDTrainer, "_on_policy_inputs", spy)
    run_training(
        _load(
            default_cache,
            **{
                "train.output_dir": str(tmp_path / "run"),
                "rlhf.lmbda": 1.0,
                "rlhf.max_completion_length": 4,
                "train.max_steps": 2,
                "train.eval_steps": 100,
                "train.save_steps": 100,
            },
        )
    )
    records = [r for r in _log_records(tmp_path / "run") if "train/live_fraction" in r]
    assert [r["train/live_fraction"] for r in records] == [1.0, 1.0]
    assert all("train/sft_loss" not in r and r["train/kl_loss"] > 0 for r in records)
    assert len(seen) == 2 and all(n > 0 for n in seen)
