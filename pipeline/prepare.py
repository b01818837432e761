"""The prepare stage: validate and normalise dataset splits, assign stable sample ids.

Each input JSONL becomes ``<out>/<same name>`` holding the usable rows, each with a ``sample_id``
(kept when given, else derived from the row's content, so it is stable across runs) and image paths
relative to the output file. Inputs that share a name (``a/data.jsonl``, ``b/data.jsonl``) keep the
folders that tell them apart (``<out>/a/data.jsonl``, ``<out>/b/data.jsonl``), so no input's rows
overwrite another's; an ``--out`` that would overwrite an input is refused. Unusable rows (not JSON, missing or unreadable image, empty response,
image/tag count mismatch, non-UTF-8 text) are left out and recorded with file, line and reason in
``<out>/prepare_report.json``: rows in = kept + dropped, per split. A split with no usable row (an
empty file, or every line unusable) is an error naming the file. Every output is written to a
temporary name and renamed only once all are complete, so a failed run (that error, a full disk)
leaves ``<out>`` as it was.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pipeline.data import partition_rows, read_rows, require_rows, write_rows
from pipeline.errors import DataError
from pipeline.files import atomic_path, atomic_write

log = logging.getLogger(__name__)


def prepare_split(src: Path, dst: Path) -> dict[str, Any]:
    """Prepare one file into ``dst`` (a temporary name beside the final file: image paths are made
    relative to its folder); ``DataError`` naming ``src`` when no row is usable (nothing is written)."""
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


def destinations(inputs: list[Path], out: Path) -> dict[str, tuple[Path, Path]]:
    """split name -> (input, output file). Each input becomes ``out/<its name>``; inputs that share a
    name keep their paths below the folder they share. ``DataError`` for an input given twice, two
    inputs that would be one split, or an output that is an input (``--out`` its own folder)."""
    by_name: dict[str, list[Path]] = defaultdict(list)
    for src in inputs:
        by_name[src.name].append(src)
    relative: dict[Path, Path] = {}
    for name, group in by_name.items():
        real = [src.resolve() for src in group]
        if len(set(real)) < len(real):
            raise DataError(f"{group[0]} is given twice; name each input once")
        base = Path(os.path.commonpath([r.parent for r in real]))
        for src, r in zip(group, real, strict=True):
            relative[src] = Path(name) if len(group) == 1 else r.relative_to(base)
    inputs_at = {src.resolve(): src for src in inputs}
    splits: dict[str, tuple[Path, Path]] = {}
    for src in inputs:
        dst = out / relative[src]
        split = relative[src].with_suffix("").as_posix()
        if split in splits:
            raise DataError(f"{splits[split][0]} and {src} would both be split {split!r}; rename one")
        if dst.resolve() in inputs_at:
            raise DataError(
                f"--out {out}: would overwrite the input {inputs_at[dst.resolve()]}; write the prepared "
                "splits to another folder (e.g. data/prepared)"
            )
        splits[split] = (src, dst)
    return splits


def prepare_splits(inputs: list[Path], out: Path) -> dict[str, Any]:
    """Prepare every input file into ``out``; writes and returns the report.

    Every split and the report are written to temporary names and renamed only once all are complete:
    a split that fails (no usable row, a full disk) leaves every output of ``out`` as it was."""
    splits = destinations(inputs, out)  # refusals come before anything is written
    with ExitStack() as renames:
        report = {
            split: prepare_split(src, renames.enter_context(atomic_path(dst)))
            for split, (src, dst) in splits.items()
        }
        fh = renames.enter_context(atomic_write(out / "prepare_report.json"))
        fh.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    for name, r in report.items():
        reasons = ", ".join(f"{k}: {v}" for k, v in r["dropped_by_reason"].items()) or "none"
        log.info(
            "[prepare %s] rows in %d, kept %d, dropped %d (%s)",
            name,
            r["rows_in"],
            r["kept"],
            r["dropped"],
            reasons,
        )
    return report
