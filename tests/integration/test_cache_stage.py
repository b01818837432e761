"""The cache stage on the tiny models: exactness, fidelity, top-k, bad rows, kill and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import gkd_config, write_config

pytestmark = pytest.mark.slow  # trains or caches with real tiny models


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


# Runs ``distill`` with the cache writer patched to send this process ``argv[1]`` (a signal name)
# right after its first shard is sealed: the signal lands at a point the test controls, never a race.
SIGNAL_AFTER_FIRST_SHARD = """
import os, signal, sys
from pipeline.cache.writer import CacheWriter
from pipeline.cli import main

seal = CacheWriter._seal

def _seal(self):
    was_open = self._file_writer is not None
    seal(self)
    if was_open and not os.environ.get("SIGNAL_SENT"):
        os.environ["SIGNAL_SENT"] = "1"
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))

CacheWriter._seal = _seal
sys.exit(main(sys.argv[2:]))
"""


def cache_with_signal(
    config: Path, sig: str, driver_dir: Path, env: dict[str, str]
) -> subprocess.CompletedProcess:
    """``distill cache --config config`` that receives ``sig`` once its first shard is sealed."""
    driver = driver_dir / "signal_after_first_shard.py"
    driver.write_text(SIGNAL_AFTER_FIRST_SHARD)
    cmd = [sys.executable, str(driver), sig, "cache", "--config", str(config)]
    repo = Path(__file__).parents[2]  # the driver imports this checkout's pipeline, not an installed one
    env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH")) if p)}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=repo)


def assert_same_cache(a: Path, b: Path) -> None:
    """Caches ``a`` and ``b`` hold the same rows: ids once each, top-k ids, logprobs (fp32, as close as
    batch composition allows), encoding hashes, counts and skip records."""
    from pipeline.cache.reader import CacheReader

    ra, rb = CacheReader(a), CacheReader(b)
    assert sorted(ra.sample_ids) == sorted(rb.sample_ids)
    assert len(set(ra.sample_ids)) == len(ra.sample_ids)
    assert ra.manifest["counts"] == rb.manifest["counts"]
    assert ra.manifest["skipped"] == rb.manifest["skipped"]
    for sid in rb.sample_ids:
        x, y = ra.get(sid), rb.get(sid)
        assert np.array_equal(x.topk_ids, y.topk_ids)
        np.testing.assert_allclose(x.topk_logprobs, y.topk_logprobs, atol=1e-6)
        assert x.encoding_hash == y.encoding_hash


def small_shard_config(demo_assets: dict[str, Path], teacher: Path, tmp_path: Path, name: str) -> Path:
    """The train split only, cached into many small fp32 shards under ``tmp_path / name``."""
    c = gkd_config(
        demo_assets,
        teacher,
        tmp_path / name,
        tmp_path / "run",
        custom={"cache_shard_mb": 0.004, "cache_batch_size": 4, "logprob_encoding": "fp32"},
    )
    c["data"]["val_dataset"] = []
    return write_config(tmp_path / f"{name}.yaml", c)


def test_kill_after_first_shard_then_resume(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = small_shard_config(demo_assets, tiny_teacher, tmp_path, "killed")
    proc = cache_with_signal(killed, "SIGKILL", tmp_path, env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert list((tmp_path / "killed" / "train").glob("*.arrow"))
    assert not (tmp_path / "killed" / "train" / "manifest.json").exists()
    cmd = [sys.executable, "-m", "pipeline.cli", "cache", "--config", str(killed)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    ref = small_shard_config(demo_assets, tiny_teacher, tmp_path, "reference")
    subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "cache", "--config", str(ref)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert_same_cache(tmp_path / "killed" / "train", tmp_path / "reference" / "train")


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
        assert x.encoding_hash == y.encoding_hash
    # one manifest merged from both ranks counts what the single process counted
    counts = ("rows_in", "cached", "skipped", "targets")
    assert {k: a.manifest["counts"][k] for k in counts} == {k: b.manifest["counts"][k] for k in counts}
    assert a.manifest["counts"]["cached"] == len(b.sample_ids) > 0


# ---- reliability: bad lines, empty and mistyped splits, one writer per directory, partial caches ----


def _small_config(
    tmp_path: Path, assets: dict[str, Path], teacher: Path, lines: list[bytes], **custom: Any
) -> Path:
    """A config whose train split is ``lines`` (written beside the demo images), no val split."""
    data = tmp_path / "data"
    shutil.copytree(Path(assets["train"]).parent, data)
    (data / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    cfg = gkd_config(assets, teacher, tmp_path / "cache", tmp_path / "run", custom=custom or None)
    cfg["data"]["dataset"] = [str(data / "train.jsonl")]
    cfg["data"]["val_dataset"] = []
    return write_config(tmp_path / "cfg.yaml", cfg)


def _demo_lines(assets: dict[str, Path], n: int) -> list[bytes]:
    return Path(assets["train"]).read_bytes().splitlines()[:n]


@pytest.fixture
def no_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the cache stage gets as far as loading the teacher."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the teacher was loaded before the problem was reported")

    monkeypatch.setattr("pipeline.teacher.stage.load_teacher", refuse)


def test_unparseable_and_non_utf8_lines_are_skipped_unless_strict(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path
) -> None:
    from pipeline.errors import DataError
    from pipeline.teacher.stage import run_caching

    lines = [*_demo_lines(demo_assets, 6), b'{"messages": "caf\xe9"}', b"{not json"]
    path = _small_config(tmp_path, demo_assets, tiny_teacher, lines)
    counts = run_caching(_load(path), progress=False)["train"]
    assert counts["rows_in"] == 8 and counts["cached"] == 6
    assert counts["skipped_by_reason"] == {"bad_row": 1, "non_utf8": 1}
    # custom.strict in the config and --strict on the command line refuse the same line.
    strict_cfg = _load(path)
    strict_cfg.custom.strict = True
    for cfg, flag in ((strict_cfg, False), (_load(path), True)):
        cfg.custom.teacher_cache = str(tmp_path / "cache_strict")
        with pytest.raises(DataError, match=r"train.jsonl:7: sample 'line-000007': non_utf8"):
            run_caching(cfg, strict=flag, progress=False)


def test_empty_split_fails_before_the_teacher_loads(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path, no_teacher: None
) -> None:
    from pipeline.errors import DataError
    from pipeline.teacher.stage import run_caching

    path = _small_config(tmp_path, demo_assets, tiny_teacher, [b""])
    with pytest.raises(
        DataError, match=r"train.jsonl: no usable rows for the train split: the file holds no rows"
    ):
        run_caching(_load(path), progress=False)


def test_val_problems_are_reported_before_the_train_split_is_cached(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path, no_teacher: None
) -> None:
    from pipeline.errors import DataError
    from pipeline.teacher.stage import run_caching

    cfg = _load(_small_config(tmp_path, demo_assets, tiny_teacher, _demo_lines(demo_assets, 4)))
    cfg.data.val_dataset = [str(tmp_path / "data" / "vall.jsonl")]  # a typo
    with pytest.raises(DataError, match=r"vall.jsonl: dataset file not found"):
        run_caching(cfg, progress=False)
    val = [json.loads(x) for x in _demo_lines(demo_assets, 3)]
    img = next(r for r in val if r.get("images"))
    img["images"] = ["images/not-there.png"]
    (tmp_path / "data" / "vall.jsonl").write_text("\n".join(json.dumps(r) for r in val) + "\n")
    with pytest.raises(DataError, match=rf"vall.jsonl:\d: sample '{img['sample_id']}': missing_image"):
        run_caching(cfg, strict=True, progress=False)
    assert not list((tmp_path / "cache").rglob("shard-*.arrow"))


def test_second_cache_run_on_one_directory_is_refused(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path, no_teacher: None
) -> None:
    from pipeline.errors import CacheLockedError
    from pipeline.teacher.stage import run_caching

    path = _small_config(tmp_path, demo_assets, tiny_teacher, _demo_lines(demo_assets, 4))
    code = (
        "import time; from pipeline.cache.lock import CacheLock\n"
        f"CacheLock({str(tmp_path / 'cache' / 'train')!r}).acquire(); print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(
            CacheLockedError, match=rf"another cache writer is running here: pid {holder.pid} on host"
        ):
            run_caching(_load(path), progress=False)
    finally:
        holder.kill()
        holder.wait()


def test_training_refuses_a_partial_cache_unless_opted_in(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path
) -> None:
    from pipeline.errors import CacheMismatchError
    from pipeline.teacher.stage import run_caching
    from pipeline.train.coverage import REPORT_NAME
    from pipeline.train.launcher import run_training

    path = _small_config(tmp_path, demo_assets, tiny_teacher, _demo_lines(demo_assets, 16))
    run_caching(_load(path), limit=6, progress=False)  # `distill cache --limit 6`
    cfg = _load(path)
    cfg.train.max_steps = 1
    with pytest.raises(
        CacheMismatchError, match=r"covers 6 of the 16 rows .*: 10 rows are neither cached nor recorded"
    ):
        run_training(cfg)
    cfg.custom.allow_partial_cache = True
    run_training(cfg)
    report = json.loads((Path(cfg.train.output_dir) / REPORT_NAME).read_text())["train"]
    assert report["rows_in"] == 16 and report["rows_used"] == 6
    assert report["excluded_by_reason"] == {"not_cached": 10}


def test_training_data_is_checked_before_the_model_loads(
    demo_assets: dict[str, Path], tmp_path: Path
) -> None:
    from pipeline.errors import DataError
    from pipeline.train.launcher import training_splits
    from tests.conftest import base_config

    cfg_dict = base_config(demo_assets, tmp_path / "run")
    rows = [json.loads(x) for x in _demo_lines(demo_assets, 8)]
    img = next(r for r in rows if r.get("images"))
    img["images"] = ["http://example.com/a.png"]
    shutil.copytree(Path(demo_assets["train"]).parent, tmp_path / "data")
    data = tmp_path / "data" / "sft.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg_dict["data"]["dataset"] = [str(data)]
    cfg = _load(write_config(tmp_path / "sft.yaml", cfg_dict))
    with pytest.raises(
        DataError, match=r"1 of 8 rows \(12.5%\) of the train split are unusable \(remote_image: 1\)"
    ):
        training_splits(cfg)
    cfg.custom.max_skipped_fraction = 0.2
    assert len(training_splits(cfg)[0].rows) == 7
    cfg.custom.strict = True
    with pytest.raises(
        DataError, match=r"remote_image: field 'images\[0\]': http://example.com/a.png: remote images"
    ):
        training_splits(cfg)
    data.write_text("")
    with pytest.raises(DataError, match=r"sft.jsonl: no usable rows for the train split"):
        training_splits(cfg)
