"""The prepare stage: validate and normalise dataset splits, assign stable sample ids.

Each input JSONL becomes ``<out>/<same name>`` holding the usable rows, each with a ``sample_id``
(kept when given, else derived from the row's content, so it is stable across runs) and image paths
relative to the output file. Unusable rows (not JSON, missing or unreadable image, empty response,
image/tag count mismatch, non-UTF-8 text) are left out and recorded with file, line and reason in
``<out>/prepare_report.json``: rows in = kept + dropped, per split. A split with no usable row (an
empty file, or every line unusable) is an error naming the file.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.data import partition_rows, read_rows, require_rows, write_rows


def prepare_split(src: Path, dst: Path) -> dict[str, Any]:
    """Prepare one file; ``DataError`` naming it when no row is usable (nothing is written then)."""
    kept, bad = partition_rows(read_rows(src))
    require_rows(src, len(kept), bad)
    dropped = [
        {"sample_id": r.sample_id, "source": r.source, "reason": r.reason, "detail": r.detail} for r in bad
    ]
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
