"""The cache stage on the tiny models: exactness, fidelity, top-k, bad rows, kill and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import gkd_config, write_config


def _load(path: Path) -> Any:
    from pipeline.config import load_config

    return load_config(path)


def _live_logprobs(cfg: Any, rows: list[Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The teacher's full log-softmax at every supervised target, per sample (float32 [n, V_teacher])."""
    from pipeline.encoding import RowEncoder
    from pipeline.models import load_teacher
    from pipeline.teacher.forward import full_logprobs, supervised_index

    teacher = load_teacher(cfg)
    enc = RowEncoder.from_config(cfg)
    enc.template.model = teacher
    out, targets = {}, {}
    for row in rows:
        e = enc.encode(row)
        batch = enc.template.data_collator([e.inputs])
        out[row.sample_id] = full_logprobs(
            teacher, batch, len(enc.tokenizer), cfg.custom.loss_temperature
        ).numpy()
        b, j = supervised_index(batch["labels"])
        targets[row.sample_id] = batch["labels"][b, j].numpy()
    return out, targets


def _rows(cfg: Any, n: int) -> list[Any]:
    from pipeline.data import Row, read_rows

    return [r for r in read_rows(cfg.data.dataset[0]) if isinstance(r, Row)][:n]


def test_exact_cache_reproduces_full_log_softmax(exact_cache: Path) -> None:
    from pipeline.cache.reader import CacheReader

    cfg = _load(exact_cache)
    reader = CacheReader(Path(cfg.custom.teacher_cache) / "train")
    live, targets = _live_logprobs(cfg, _rows(cfg, 6))
    for sid, full in live.items():
        s = reader.get(sid)
        real = s.topk_ids.shape[1]
        assert np.array_equal(s.target_ids, targets[sid])
        got = np.full((len(s.target_ids), real), np.nan, dtype=np.float64)
        np.put_along_axis(got, s.topk_ids, s.topk_logprobs.astype(np.float64), axis=1)
        assert real == full.shape[1]  # k = every real id (the teacher's padded rows are not tokens)
        np.testing.assert_allclose(got, full, atol=1e-5)
        assert np.isneginf(s.tail_logprobs).all()
        np.testing.assert_allclose(s.target_logprobs, full[np.arange(len(full)), targets[sid]], atol=1e-5)


def test_default_cache_within_fidelity_and_topk_is_live_topk(default_cache: Path) -> None:
    from pipeline.cache.reader import CacheReader

    cfg = _load(default_cache)
    reader = CacheReader(Path(cfg.custom.teacher_cache) / "train")
    live, _ = _live_logprobs(cfg, _rows(cfg, 6))
    k = reader.top_k
    for sid, full in live.items():
        s = reader.get(sid)
        ref = np.sort(np.argsort(-full, axis=1)[:, :k], axis=1)
        # ids: exactly the live top-k (up to exact ties, absent from random-init logits)
        assert np.array_equal(np.sort(s.topk_ids, axis=1), ref)
        # values: KL(exact || decoded) over the k+1 categories within the format's budget
        p = np.exp(np.take_along_axis(full, s.topk_ids, 1).astype(np.float64))
        p_tail = np.clip(1.0 - p.sum(1), 1e-300, None)
        q = np.exp(s.topk_logprobs.astype(np.float64))
        q_tail = np.exp(s.tail_logprobs.astype(np.float64))
        z = q.sum(1) + q_tail
        q, q_tail = q / z[:, None], q_tail / z
        kl = (p * (np.log(p) - np.log(q))).sum(1) + p_tail * (np.log(p_tail) - np.log(q_tail))
        assert kl.mean() < 1e-4


def test_bad_rows_are_skipped_with_reasons_and_strict_fails(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path
) -> None:
    from pipeline.errors import DataError
    from pipeline.teacher.stage import run_caching

    data = tmp_path / "data"
    shutil.copytree(Path(demo_assets["train"]).parent, data)
    lines = (data / "train.jsonl").read_text().splitlines()[:10]
    rows = [json.loads(x) for x in lines]
    img_rows = [i for i, r in enumerate(rows) if len(r.get("images", [])) == 1]
    (data / rows[img_rows[0]]["images"][0]).write_bytes(b"not a png")  # corrupted image
    rows[img_rows[1]]["images"] = ["images/does-not-exist.png"]  # missing image
    rows[img_rows[2]]["messages"][-1]["content"] = " ".join(
        ["a large red circle at the top left."] * 60
    )  # too long
    (data / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = gkd_config(demo_assets, tiny_teacher, tmp_path / "cache", tmp_path / "run")
    cfg["data"]["dataset"] = [str(data / "train.jsonl")]
    cfg["data"]["val_dataset"] = []
    cfg["data"]["max_length"] = 128
    path = write_config(tmp_path / "cfg.yaml", cfg)
    counts = run_caching(_load(path), progress=False)["train"]
    assert counts["rows_in"] == 10 == counts["cached"] + counts["skipped"]
    assert counts["skipped_by_reason"] == {
        "unreadable_image": 1,
        "missing_image": 1,
        "truncated_by_max_length": 1,
    }
    manifest = json.loads((tmp_path / "cache" / "train" / "manifest.json").read_text())
    assert manifest["counts"]["skipped"] == 3

    cfg["custom"]["teacher_cache"] = str(tmp_path / "cache_strict")
    path = write_config(tmp_path / "strict.yaml", cfg)
    with pytest.raises(DataError) as err:
        run_caching(_load(path), strict=True, progress=False)
    first_bad = rows[min(img_rows[:3])]["sample_id"]
    assert first_bad in str(err.value)


def test_kill_after_first_shard_then_resume(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path
) -> None:
    from pipeline.cache.reader import CacheReader

    def cfg_for(name: str) -> Path:
        c = gkd_config(
            demo_assets,
            tiny_teacher,
            tmp_path / name,
            tmp_path / "run",
            custom={"cache_shard_mb": 0.004, "cache_batch_size": 4, "logprob_encoding": "fp32"},
        )
        c["data"]["val_dataset"] = []
        return write_config(tmp_path / f"{name}.yaml", c)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = cfg_for("killed")
    cmd = [sys.executable, "-m", "pipeline.cli", "cache", "--config", str(killed)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list((tmp_path / "killed" / "train").glob("*.arrow")):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the cache stage finished before its first shard could be observed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "train" / "manifest.json").exists()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    ref = cfg_for("reference")
    subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "cache", "--config", str(ref)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    a = CacheReader(tmp_path / "killed" / "train")
    b = CacheReader(tmp_path / "reference" / "train")
    assert sorted(a.sample_ids) == sorted(b.sample_ids)
    assert len(set(a.sample_ids)) == len(a.sample_ids)
    for sid in b.sample_ids:
        x, y = a.get(sid), b.get(sid)
        assert np.array_equal(x.topk_ids, y.topk_ids)
        np.testing.assert_allclose(x.topk_logprobs, y.topk_logprobs, atol=1e-6)
        assert x.encoding_hash == y.encoding_hash


def test_data_parallel_caching_matches_single_process(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path
) -> None:
    from pipeline.cache.reader import CacheReader

    def cfg_for(name: str) -> Path:
        c = gkd_config(
            demo_assets, tiny_teacher, tmp_path / name, tmp_path / "run", custom={"logprob_encoding": "fp32"}
        )
        c["data"]["val_dataset"] = []
        return write_config(tmp_path / f"{name}.yaml", c)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    dp, single = cfg_for("dp"), cfg_for("single")
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "pipeline.cli",
            "cache",
            "--config",
            str(dp),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "cache", "--config", str(single)],
        env=env,
        check=True,
        capture_output=True,
    )
    a, b = CacheReader(tmp_path / "dp" / "train"), CacheReader(tmp_path / "single" / "train")
    assert sorted(a.sample_ids) == sorted(b.sample_ids)
    assert len(list((tmp_path / "dp" / "train").glob("*r01*.arrow"))) >= 1  # rank 1 wrote its own shards
    for sid in b.sample_ids:
        x, y = a.get(sid), b.get(sid)
        assert np.array_equal(x.topk_ids, y.topk_ids)
        np.testing.assert_allclose(x.topk_logprobs, y.topk_logprobs, atol=1e-5)
        np.testing.assert_allclose(x.tail_logprobs, y.tail_logprobs, atol=1e-5)
    assert torch is not None
