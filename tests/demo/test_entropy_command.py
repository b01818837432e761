"""``python -m pipeline.demo.entropy``: the demo teacher's entropy profile of a real cache, end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_the_entropy_command_profiles_the_rows_of_one_split(
    default_cache: Path,
    demo_assets: dict[str, Path],
    tiny_teacher: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.demo.entropy import main

    out = tmp_path / "profile.json"
    cache = default_cache.parent / "cache" / "train"
    rows = Path(demo_assets["train"])
    argv = ["entropy", str(cache), "--tokenizer", str(tiny_teacher), "--rows", str(rows), "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    prof = json.loads(out.read_text())
    n_rows = sum(1 for line in rows.read_text().splitlines() if line.strip())
    assert 0 < prof["rows"] <= n_rows and prof["threshold"] == 0.5
