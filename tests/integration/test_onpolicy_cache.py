"""On-policy rounds through the cache on the tiny demo models: a student checkpoint writes the pool's
responses, the teacher scores them in the cache stage, and a training run takes its ``lmbda`` steps
from that round without a teacher in the process.

Caches use fp32 log-probs and one row per forward (as in ``test_incremental``), so "the same cache"
means the same values bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import gkd_config, write_config
from tests.integration.test_cache_stage import assert_same_cache, cache_with_signal

pytestmark = pytest.mark.slow  # caches and a training run with real tiny models

EXACT = {"logprob_encoding": "fp32", "cache_batch_size": 1, "cache_shard_mb": 0.004}
N_LABELLED, N_POOL = 4, 8


@pytest.fixture(scope="module")
def data(demo_assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the demo data with ``round.jsonl`` (4 labelled rows, then 8 prompt-only pool rows),
    ``pool.jsonl`` (the 8 pool rows) and ``labelled.jsonl`` (the 4 labelled rows)."""
    d = tmp_path_factory.mktemp("onpolicy") / "data"
    shutil.copytree(Path(demo_assets["labelled_pool"]).parent, d)
    lines = (d / "labelled_pool.jsonl").read_text().splitlines()
    labelled = [x for x in lines if json.loads(x)["sample_id"].startswith("labelled-")][:N_LABELLED]
    pool = [x for x in lines if json.loads(x)["sample_id"].startswith("pool-")][:N_POOL]
    for name, rows in (("round", labelled + pool), ("pool", pool), ("labelled", labelled)):
        (d / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
    return d


def _round_config(
    root: Path, assets: dict[str, Path], teacher: Path, dataset: Path, writer: Path, round_label: str
) -> Any:
    from pipeline.config import load_config

    custom = {
        **EXACT,
        "written_responses": "prompt_only",
        "written_by": str(writer),
        "written_round": round_label,
        "written_temperature": 0.9,  # sampled like on-policy batches, seeded
        "written_max_new_tokens": 8,
        "written_unfinished": "keep",  # the demo student rarely stops within 8 tokens
    }
    cfg = gkd_config(assets, teacher, root / "cache", root / "run", custom=custom)
    cfg["data"]["dataset"], cfg["data"]["val_dataset"] = [str(dataset)], []
    name = f"round-{Path(writer).name}-{round_label}.yaml"
    return load_config(write_config(root / name, cfg))


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, Any]]]:
    """Every model load of the cache stage in order, as ``("student" | "teacher", model)``, and
    every generation call's model as ``("generate", model)``."""
    import pipeline.models as models
    import pipeline.teacher.stage as stage
    import pipeline.teacher.written as written

    seen: list[tuple[str, Any]] = []
    real_trained, real_teacher, real_generate = models.load_trained, stage.load_teacher, written.generate

    def trained(*a: Any, **k: Any) -> Any:
        out = real_trained(*a, **k)
        seen.append(("student", out[0]))
        return out

    def teacher(*a: Any, **k: Any) -> Any:
        out = real_teacher(*a, **k)
        seen.append(("teacher", out))
        return out

    def generate(model: Any, *a: Any, **k: Any) -> Any:
        seen.append(("generate", model))
        return real_generate(model, *a, **k)

    monkeypatch.setattr(models, "load_trained", trained)
    monkeypatch.setattr(stage, "load_teacher", teacher)
    monkeypatch.setattr(written, "generate", generate)
    yield seen


def _samples(root: Path) -> dict[str, Any]:
    from pipeline.cache.export import live_samples
    from pipeline.cache.reader import CacheReader

    return {s.sample_id: s for s in live_samples(CacheReader(root))}


def test_a_student_writes_the_pool_and_rounds_add_generations(
    demo_assets: dict[str, Path],
    tiny_teacher: Path,
    data: Path,
    tmp_path: Path,
    forwards: list[int],
    loads: list[tuple[str, Any]],
) -> None:
    from pipeline.cache.cachedir import SplitDir
    from pipeline.fingerprint import model_dir_hash
    from pipeline.teacher.stage import run_caching

    student = Path(demo_assets["student"])
    root = tmp_path / "cache" / "train"
    r1 = _round_config(tmp_path, demo_assets, tiny_teacher, data / "round.jsonl", student, "r1")
    counts = run_caching(r1, progress=False)["train"]

    # The student is loaded first, writes every pool row, and the teacher (loaded after) writes none.
    kinds = [k for k, _ in loads]
    assert kinds[0] == "student" and kinds.count("student") == 1 and "teacher" in kinds
    assert kinds.index("teacher") > max(i for i, k in enumerate(kinds) if k == "generate")
    assert all(m is loads[0][1] for k, m in loads if k == "generate")
    # The teacher forward ran once per row: the labelled rows as they are, each written response.
    assert sum(forwards) == N_LABELLED + N_POOL
    samples = _samples(root)
    pool = sorted(s for s in samples if s.startswith("pool-"))
    assert len(pool) == N_POOL and counts["teacher_written"]["written"] == N_POOL
    assert all(samples[s].teacher_written and samples[s].written_text for s in pool)
    assert not any(samples[s].teacher_written for s in samples if s.startswith("labelled-"))
    # The writer is recorded with the generation: its digests and the round, no path in the key.
    writer = SplitDir(root).manifest().last_generation["dataset"]["written_by"]
    assert writer["weights_sha256"] == model_dir_hash(student)["weights_sha256"]
    assert writer["round"] == "r1" and writer["checkpoint"] == str(student)

    # Nothing changed: nothing is forwarded and the student is not even loaded.
    forwards.clear()
    loads.clear()
    run_caching(r1, progress=False)
    assert sum(forwards) == 0 and "student" not in [k for k, _ in loads]
    gens = SplitDir(root).manifest().generations
    assert gens[-1]["reused"] == N_LABELLED + N_POOL

    # A new round of the same checkpoint: the pool is written again (fresh seed), labelled rows reused.
    forwards.clear()
    r2 = _round_config(tmp_path, demo_assets, tiny_teacher, data / "round.jsonl", student, "r2")
    run_caching(r2, progress=False)
    last = SplitDir(root).manifest().last_generation
    assert sum(forwards) == N_POOL and last["changed"] == N_POOL and last["reused"] == N_LABELLED
    assert last["dataset"]["written_by"]["round"] == "r2"

    # Another writer (a different checkpoint) adds a generation of its own.
    forwards.clear()
    other = _round_config(tmp_path, demo_assets, tiny_teacher, data / "round.jsonl", tiny_teacher, "r2")
    run_caching(other, progress=False)
    last = SplitDir(root).manifest().last_generation
    assert sum(forwards) == N_POOL and last["changed"] == N_POOL
    assert last["dataset"]["written_by"]["weights_sha256"] == model_dir_hash(tiny_teacher)["weights_sha256"]
    assert len(SplitDir(root).manifest().generations) == len(gens) + 2


def test_a_killed_round_resumes_to_the_same_cache(
    demo_assets: dict[str, Path], tiny_teacher: Path, data: Path, tmp_path: Path
) -> None:
    import signal

    from pipeline.cli import main

    student = Path(demo_assets["student"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed_cfg = _round_config(
        tmp_path / "killed", demo_assets, tiny_teacher, data / "pool.jsonl", student, "r1"
    )
    fresh_cfg = _round_config(
        tmp_path / "fresh", demo_assets, tiny_teacher, data / "pool.jsonl", student, "r1"
    )
    killed, fresh = Path(killed_cfg.config_path), Path(fresh_cfg.config_path)
    assert cache_with_signal(killed, "SIGKILL", tmp_path, env).returncode == -signal.SIGKILL
    held = _samples_on_disk(tmp_path / "killed" / "cache" / "train")
    assert 0 < held < N_POOL  # killed mid-round, written rows on disk
    assert main(["cache", "--config", str(killed)]) == 0
    assert main(["cache", "--config", str(fresh)]) == 0
    a, b = tmp_path / "killed" / "cache" / "train", tmp_path / "fresh" / "cache" / "train"
    assert_same_cache(a, b)
    sa, sb = _samples(a), _samples(b)
    assert {s: x.written_text for s, x in sa.items()} == {s: x.written_text for s, x in sb.items()}
    assert all((sa[s].topk_logprobs == sb[s].topk_logprobs).all() for s in sa)  # bit for bit


def _samples_on_disk(root: Path) -> int:
    from pipeline.cache.shards import read_shard_index

    return sum(len(read_shard_index(p)[1]) for p in root.glob("shard-*.arrow"))


def test_lmbda_through_the_cache_trains_without_a_teacher_and_no_ce_on_written_rows(
    demo_assets: dict[str, Path],
    tiny_teacher: Path,
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import random

    import pipeline.models as models
    import pipeline.train.sft_pipeline as sft_pipeline
    from pipeline.config import load_config
    from pipeline.teacher.stage import run_caching
    from pipeline.train.launcher import run_training
    from pipeline.train.onpolicy_cache import OnPolicyBatches
    from pipeline.train.trainer import CachedGKDTrainer

    # The round: the student writes the pool, the teacher scores it.
    student = Path(demo_assets["student"])
    round_cfg = _round_config(tmp_path / "r1", demo_assets, tiny_teacher, data / "pool.jsonl", student, "r1")
    run_caching(round_cfg, progress=False)
    # The run: its dataset rows cached as usual (same teacher, k and encoding), lmbda through the round.
    raw = gkd_config(
        demo_assets,
        tiny_teacher,
        tmp_path / "dataset_cache",
        tmp_path / "run",
        rlhf={"lmbda": 0.5, "sft_alpha": 0.5},
        custom={
            **EXACT,
            "onpolicy_cache": str(tmp_path / "r1" / "cache" / "train"),
            "onpolicy_dataset": str(data / "pool.jsonl"),
        },
        max_steps=4,
        eval_steps=100,
        save_steps=100,
    )
    raw["data"]["dataset"], raw["data"]["val_dataset"] = [str(data / "labelled.jsonl")], []
    cfg = load_config(write_config(tmp_path / "train.yaml", raw))
    run_caching(cfg, progress=False)

    def no_teacher(*a: Any, **k: Any) -> None:
        raise AssertionError("on-policy batches through the cache must not load a teacher")

    monkeypatch.setattr(sft_pipeline, "load_teacher", no_teacher)
    monkeypatch.setattr(models, "load_teacher", no_teacher)
    monkeypatch.setattr(CachedGKDTrainer, "_live_teacher_logits", no_teacher)
    drawn: list[list[str]] = []
    real_next = OnPolicyBatches.next

    def spy(self: Any, device: Any) -> Any:
        batch = real_next(self, device)
        drawn.append(list(batch["sample_ids"]))
        return batch

    monkeypatch.setattr(OnPolicyBatches, "next", spy)
    run_training(cfg)

    records = [
        json.loads(x) for x in (tmp_path / "run" / "logging.jsonl").read_text().splitlines() if x.strip()
    ]
    steps = {int(r["global_step/max_steps"].split("/")[0]): r for r in records if "train/live_fraction" in r}
    expected = {s: random.Random(cfg.train.seed + s - 1).random() < 0.5 for s in range(1, 5)}
    assert {s: bool(r["train/live_fraction"]) for s, r in steps.items()} == expected
    assert 0 < sum(expected.values()) < 4  # both kinds of step ran
    assert len(drawn) == sum(expected.values())
    assert all(sid.startswith("pool-") for batch in drawn for sid in batch)
    for s, r in steps.items():
        if expected[s]:  # student-written rows: the loss is the KD term alone (no CE, none recorded)
            assert "train/sft_loss" not in r
            assert r["train/loss"] == pytest.approx(r["train/kl_loss"], rel=1e-3, abs=1e-4)
        else:  # dataset rows: KD + sft_alpha * CE, from their own cache
            assert r["train/sft_loss"] > 0.1
            want = r["train/kl_loss"] + 0.5 * r["train/sft_loss"]
            assert r["train/loss"] == pytest.approx(want, rel=1e-3, abs=1e-4)
    assert (tmp_path / "run" / "final").is_dir()
