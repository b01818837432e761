"""The prepare stage: validate and normalise dataset splits, assign stable sample ids.

Each input JSONL becomes ``<out>/<same name>`` holding the usable rows, each with a ``sample_id``
(kept when given, else derived from the row's content, so it is stable across runs) and image paths
relative to the output file. Unusable rows (not JSON, missing or unreadable image, empty response,
image/tag count mismatch, non-UTF-8 text) are left out and recorded with file, line and reason in
``<out>/prepare_report.json``: rows in = kept + dropped, per split.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.data import BadRow, Row, check_row, read_rows, write_rows


def prepare_split(src: Path, dst: Path) -> dict[str, Any]:
    kept: list[Row] = []
    dropped: list[dict[str, str]] = []
    for r in read_rows(src):
        problem = (r.reason, r.detail) if isinstance(r, BadRow) else check_row(r)
        if problem is None:
            assert isinstance(r, Row)
            kept.append(r)
        else:
            dropped.append(
                {"sample_id": r.sample_id, "source": r.source, "reason": problem[0], "detail": problem[1]}
            )
    write_rows(kept, dst)
    n_in = len(kept) + len(dropped)
    return {
        "file": str(src),
        "rows_in": n_in,
        "kept": len(kept),
        "dropped": len(dropped),
        "dropped_by_reason": dict(Counter(d["reason"] for d in dropped)),
        "dropped_rows": dropped,
    }


def prepare_splits(inputs: list[Path], out: Path) -> dict[str, Any]:
    """Prepare every input file into ``out``; writes and returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    report = {src.stem: prepare_split(src, out / src.name) for src in inputs}
    (out / "prepare_report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    for name, r in report.items():
        reasons = ", ".join(f"{k}: {v}" for k, v in r["dropped_by_reason"].items()) or "none"
        print(
            f"[prepare {name}] rows in {r['rows_in']}, kept {r['kept']}, dropped {r['dropped']} ({reasons})"
        )
    return report
