"""Forged, swapped and concurrently written caches are refused with errors that say what happened."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache.format import MANIFEST_NAME
from pipeline.cache.lock import LOCK_NAME, CacheLock
from pipeline.cache.reader import CacheReader
from pipeline.cache.writer import CacheWriter
from pipeline.errors import CacheFormatError, CacheLockedError
from pipeline.hashing import file_sha256
from tests.cache.helpers import FINGERPRINT, random_sample

K, VOCAB = 8, 5000
N_SAMPLES = 24  # rolled into several shards by the small byte budget
DOC = Path(__file__).resolve().parents[2] / "docs" / "cache_format.md"


def _cache(root: Path) -> Path:
    rng = np.random.default_rng(0)
    with CacheWriter(root, fingerprint=FINGERPRINT, top_k=K, vocab_size=VOCAB, shard_bytes=3000) as w:
        for i in range(N_SAMPLES):
            w.add(random_sample(rng, f"s{i:02d}", 12, K, VOCAB))
    assert len(list(root.glob("shard-*.arrow"))) >= 3
    return root


def _manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST_NAME).read_text())


def _save(root: Path, manifest: dict) -> None:
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_hand_edited_manifest_fingerprint_is_refused(tmp_path: Path) -> None:
    root = _cache(tmp_path / "c")
    m = _manifest(root)
    m["fingerprint"]["top_k"] = 64  # forged to match another config
    _save(root, m)
    with pytest.raises(CacheFormatError, match=r"its own fingerprint differs from manifest.json's in top_k"):
        CacheReader(root)


def test_swapped_shard_with_fixed_checksum_is_refused(tmp_path: Path) -> None:
    root = _cache(tmp_path / "c")
    a, b = sorted(root.glob("shard-*.arrow"))[:2]
    shutil.copyfile(a, b)  # b now holds a's rows: a's duplicated, b's missing
    m = _manifest(root)
    for rec in m["shards"]:
        if rec["file"] == b.name:
            rec.update(bytes=b.stat().st_size, sha256=file_sha256(b), rows=m["shards"][0]["rows"])
    _save(root, m)
    with pytest.raises(
        CacheFormatError, match=rf"is stored twice \({a.name} and {b.name}\): a shard was copied"
    ):
        CacheReader(root)


def test_shard_row_count_and_manifest_counts_are_checked(tmp_path: Path) -> None:
    root = _cache(tmp_path / "c")
    m = _manifest(root)
    m["counts"]["cached"] += 1
    _save(root, m)
    with pytest.raises(
        CacheFormatError, match=rf"counts.cached is {N_SAMPLES + 1} but the shards hold {N_SAMPLES}"
    ):
        CacheReader(root)


def test_audit_goes_through_the_reader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    root = _cache(tmp_path / "c")
    m = _manifest(root)
    m["fingerprint"]["teacher"]["weights_sha256"] = "00" * 32
    _save(root, m)
    assert main(["inspect", str(root), "--audit"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "CacheFormatError" in err and "teacher.weights_sha256" in err


def _hold_lock_elsewhere(root: Path) -> subprocess.Popen:
    """Another launch (a separate process) holding ``root``'s writer lock until killed."""
    code = (
        "import sys, time; from pipeline.cache.lock import CacheLock\n"
        f"CacheLock({str(root)!r}).acquire(); print('held', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_and_leaves_the_first_ones_files(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    in_progress = root / "shard-r00-00000.arrow.tmp-424242"  # the first writer's shard being written
    in_progress.write_bytes(b"partial")
    holder = _hold_lock_elsewhere(root)
    try:
        with pytest.raises(
            CacheLockedError, match=rf"another cache writer is running here: pid {holder.pid} on host"
        ):
            CacheLock(root).acquire()
        with pytest.raises(CacheLockedError, match=rf"pid {holder.pid}"):
            CacheWriter(root, fingerprint=FINGERPRINT, top_k=K, vocab_size=VOCAB)
        assert in_progress.exists()
    finally:
        holder.kill()
        holder.wait()
    with CacheLock(root):  # released by the kernel when the holder died (SIGKILL)
        assert json.loads((root / LOCK_NAME).read_text())["launch"].startswith("process:")


def test_ranks_of_one_launch_share_the_lock_and_another_launch_is_refused(tmp_path: Path) -> None:
    launch = {"TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    other = {**launch, "MASTER_PORT": "29501"}
    from pipeline.cache.lock import launch_id

    mine, theirs = launch_id(launch), launch_id(other)
    assert mine != theirs
    with CacheLock(tmp_path, launch=mine):  # rank 0
        CacheLock(tmp_path, launch=mine, wait_s=1).join()  # rank 1 of the same launch
        with pytest.raises(CacheLockedError, match=re.escape(f"(launch {mine}, since")):
            CacheLock(tmp_path, launch=theirs, wait_s=1).join()
    with pytest.raises(CacheLockedError, match=r"rank 0 of launch .* does not hold the writer lock"):
        CacheLock(tmp_path, launch=mine, wait_s=0.2).join()


def test_teacher_fingerprint_hashes_weights_and_config_only(tmp_path: Path) -> None:
    from pipeline.fingerprint import model_dir_hash

    ckpt = tmp_path / "teacher"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"hidden_size": 8}')
    (ckpt / "model.safetensors").write_bytes(b"weights-v1")
    (ckpt / "training_args.bin").write_bytes(b"trainer state 1")
    before = model_dir_hash(ckpt)
    for name in ("training_args.bin", "optimizer.pt", "rng_state.pth", "trainer_state.json"):
        (ckpt / name).write_bytes(b"re-saved trainer state")
    assert model_dir_hash(ckpt) == before
    (ckpt / "model.safetensors").write_bytes(b"weights-v2")
    assert model_dir_hash(ckpt)["weights_sha256"] != before["weights_sha256"]
    (ckpt / "config.json").write_text('{"hidden_size": 16}')
    assert model_dir_hash(ckpt)["config_sha256"] != before["config_sha256"]


def test_docs_pyarrow_dataset_example_reads_a_cache_dir(tmp_path: Path) -> None:
    root = _cache(tmp_path / "c")
    with CacheLock(root):  # the lock file is in the directory while a writer runs
        text = DOC.read_text(encoding="utf-8")
        block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "pyarrow.dataset" in b)
        namespace: dict = {}
        code = block.replace('"runs/demo/cache/train"', repr(str(root)))
        exec(compile(code, str(DOC), "exec"), namespace)  # our own doc
    table = namespace["table"]
    assert table.num_rows == N_SAMPLES
    assert sorted(table.column("sample_id").to_pylist()) == sorted(CacheReader(root).sample_ids)
