"""Student-written rounds, without models: the writer's key in each written row's key, the round in
the sampling seed, and the settings that go together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.cache.live import LiveState, StoredRow
from pipeline.data import Row
from pipeline.teacher.incremental import key_rows, writer_digest
from pipeline.teacher.plan import SplitPlan

LABELLED = Row("labelled-0", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a."}])
POOL = Row("pool-0", [{"role": "user", "content": "describe"}])
PLAIN = {"labelled-0": "d-labelled", "pool-0": "d-pool"}


def _plan() -> SplitPlan:
    return SplitPlan("train", "x.jsonl", 2, [LABELLED, POOL], [], ["x.jsonl"], dict(PLAIN))


def _state(pool_digest: str) -> LiveState:
    rows = {
        "labelled-0": StoredRow("labelled-0", "s0", "h0", 2, PLAIN["labelled-0"]),
        "pool-0": StoredRow("pool-0", "s0", "h1", 2, pool_digest),
    }
    return LiveState(2, {"s0": 1}, list(rows.values()), rows, [], {})


def _no_encoding(row: Row) -> str | None:
    raise AssertionError("rows with a digest are never encoded to be keyed")


def test_a_written_row_is_keyed_by_its_writer_and_a_dataset_row_is_not() -> None:
    keyed = key_rows(_plan(), _state(writer_digest("d-pool", "A")), _no_encoding, ("prompt_only", "A"))
    assert keyed.digests == {"labelled-0": "d-labelled", "pool-0": writer_digest("d-pool", "A")}
    assert keyed.reused == 2 and not keyed.todo  # same writer: reused
    other = key_rows(_plan(), _state(writer_digest("d-pool", "A")), _no_encoding, ("prompt_only", "B"))
    assert other.reused == 1 and other.changed == ["pool-0"] and other.todo == [POOL]
    # The teacher's key is None: plain digests, so caches it wrote keep being reused.
    teacher = key_rows(_plan(), _state("d-pool"), _no_encoding, ("prompt_only", None))
    assert teacher.reused == 2 and teacher.digests == PLAIN
    assert writer_digest("d-pool", "A") not in (writer_digest("d-pool", "B"), writer_digest("d-other", "A"))


def _cfg(tmp_path: Path, **custom: Any) -> Any:
    from pipeline.config import load_config
    from tests.conftest import write_config

    raw = {
        "model": {"model": "/models/student", "model_type": "qwen2_5_vl", "template": "qwen2_5_vl"},
        "data": {"dataset": ["train.jsonl"]},
        "train": {"learning_rate": 1e-4, "num_train_epochs": 1},
        "rlhf": {"rlhf_type": "gkd", "teacher_model": "/models/teacher", "lmbda": 0.0},
        "custom": {"trainer_variant": "gkd_cached", "teacher_cache": "cache", **custom},
    }
    return load_config(write_config(tmp_path / "cfg.yaml", raw))


def test_writer_key_changes_with_the_checkpoint_and_the_round_and_not_with_its_path(tmp_path: Path) -> None:
    from pipeline.fingerprint import writer_key, writer_record

    for name, blob in (("a", b"weights a"), ("b", b"weights b"), ("a_copy", b"weights a")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(blob)
        (tmp_path / name / "config.json").write_text("{}")
    keys = {
        (w, r): writer_key(
            writer_record(
                _cfg(tmp_path, written_responses="prompt_only", written_by=str(tmp_path / w), written_round=r)
            )
        )
        for w in ("a", "b", "a_copy")
        for r in ("r1", "r2")
    }
    assert keys[("a", "r1")] == keys[("a_copy", "r1")]  # the same weights elsewhere: the same writer
    assert len({keys[("a", "r1")], keys[("a", "r2")], keys[("b", "r1")]}) == 3
    assert writer_record(_cfg(tmp_path, written_responses="prompt_only")) is None  # the teacher writes


def test_a_round_label_reseeds_a_student_writer_only(tmp_path: Path) -> None:
    from pipeline.teacher.written import sampling_settings

    (tmp_path / "s").mkdir()
    student = {
        "written_responses": "prompt_only",
        "written_by": str(tmp_path / "s"),
        "written_temperature": 0.9,
    }
    seeds = {
        r: sampling_settings(_cfg(tmp_path, **student, written_round=r), 4).seed for r in ("", "r1", "r2")
    }
    assert seeds[""] == 0 and len(set(seeds.values())) == 3
    teacher = _cfg(tmp_path, written_responses="prompt_only", written_round="r1")
    assert sampling_settings(teacher, 4).seed == 0  # the round is ignored when the teacher writes


@pytest.mark.parametrize(
    ("custom", "rlhf", "match"),
    [
        ({"written_by": "/ckpt"}, {}, "custom.written_responses is `off`"),
        ({"onpolicy_cache": "r1/train"}, {"lmbda": 0.5}, "go together"),
        ({"onpolicy_cache": "r1/train", "onpolicy_dataset": "pool.jsonl"}, {}, "rlhf.lmbda is 0"),
        (
            {"trainer_variant": "gkd_monitor", "onpolicy_cache": "r1/train", "onpolicy_dataset": "p.jsonl"},
            {"lmbda": 0.5},
            "need custom.trainer_variant: gkd_cached",
        ),
    ],
)
def test_settings_that_go_together_are_checked_when_the_config_loads(
    tmp_path: Path, custom: dict[str, Any], rlhf: dict[str, Any], match: str
) -> None:
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    cfg = _cfg(tmp_path)
    overrides = {f"custom.{k}": v for k, v in custom.items()} | {f"rlhf.{k}": v for k, v in rlhf.items()}
    with pytest.raises(ConfigError, match=match):
        load_config(cfg.config_path, overrides)


def test_on_policy_through_the_cache_needs_no_live_teacher(tmp_path: Path) -> None:
    from pipeline.config import load_config, needs_live_teacher
    from pipeline.train.swift_args import swift_kwargs

    cfg = _cfg(tmp_path)
    live = load_config(cfg.config_path, {"rlhf.lmbda": 0.5})
    cached = load_config(
        cfg.config_path,
        {"rlhf.lmbda": 0.5, "custom.onpolicy_cache": "r1/train", "custom.onpolicy_dataset": "pool.jsonl"},
    )
    assert needs_live_teacher(live) and not needs_live_teacher(cached)
    assert swift_kwargs(live, "rlhf")["teacher_model"] == "/models/teacher"
    assert not swift_kwargs(cached, "rlhf").get("teacher_model")  # ms-swift would load it
    # live on-policy batches demand a teacher checkpoint; through the cache they do not
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"custom\.onpolicy_cache to a student-written cache"):
        load_config(cfg.config_path, {"rlhf.lmbda": 0.5, "rlhf.teacher_model": None})
    load_config(
        cfg.config_path,
        {
            "rlhf.lmbda": 0.5,
            "rlhf.teacher_model": None,
            "custom.onpolicy_cache": "r1/train",
            "custom.onpolicy_dataset": "pool.jsonl",
        },
    )
