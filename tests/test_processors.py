"""A processor is read once per directory and process, and again only after a file of it changed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def test_one_processor_per_directory_until_a_file_changes(
    demo_assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import swift.model

    from pipeline.processors import load_processor

    student = Path(shutil.copytree(demo_assets["student"], tmp_path / "student"))
    calls: list[str] = []
    real = swift.model.get_processor

    def counting(location: str, **kw: object) -> object:
        calls.append(location)
        return real(location, **kw)

    monkeypatch.setattr(swift.model, "get_processor", counting)
    first = load_processor(student, "qwen2_5_vl")
    assert load_processor(tmp_path / "." / "student", "qwen2_5_vl") is first and len(calls) == 1
    config = student / "tokenizer_config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # edited in place
    assert load_processor(student, "qwen2_5_vl") is not first and len(calls) == 2
