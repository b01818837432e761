"""``distill inspect`` on an incremental cache: its history and the rows its dataset no longer has."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.cache.format import MANIFEST_NAME
from pipeline.cache.reader import CacheReader
from pipeline.inspection.history import history_lines
from tests.cache.test_generations import dataset, fresh, incremental


def test_history_and_unreferenced_rows_are_listed(tmp_path: Path) -> None:
    root = tmp_path / "train"
    fresh(root, dataset(6))
    incremental(root, dataset(6, edited={"row-001": 101}))
    lines = [
        json.dumps({"sample_id": f"row-{i:03d}", "messages": [{"role": "user", "content": "hi"}]})
        for i in (1, 2, 4)
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    manifest["sources"] = {"dataset": str(tmp_path / "train.jsonl")}
    out = history_lines(root, manifest, CacheReader(root).sample_ids)
    assert out[0].startswith(
        "history: 2 generations, 6 stored rows, 1 superseded; last run: 6 rows, 4 reused"
    )
    assert out[1].startswith("2 cached rows are not in ") and out[1].endswith("drops them): row-000, row-005")
