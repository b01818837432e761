"""What ``distill inspect`` says about an incremental cache's history: its generations, superseded
versions, and the rows it holds that the dataset no longer has (kept until ``distill cache --compact``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.cache.cachedir import Manifest
from pipeline.data import read_split_rows
from pipeline.errors import DistillError

SHOWN = 10  # unreferenced sample ids listed by name


def dataset_files(root: Path, manifest: dict[str, Any], cfg: Any = None) -> list[str]:
    """The split files of the cache at ``root``: the config's (``--config``), else the recorded one."""
    keys = {"train": "dataset", "val": "val_dataset"}
    if cfg is not None and root.name in keys:
        return list(getattr(cfg.data, keys[root.name]))
    recorded = Manifest(manifest).sources.get("dataset")
    return [recorded] if recorded and Path(recorded).is_file() else []


def history_lines(root: Path, manifest: dict[str, Any], sample_ids: list[str], cfg: Any = None) -> list[str]:
    """Lines for the inspect summary; none for a one-generation cache that matches its dataset."""
    generations = Manifest(manifest).generations
    storage = Manifest(manifest).storage
    lines = []
    if len(generations) > 1 or storage.get("superseded"):
        last = generations[-1] if generations else {}
        lines.append(
            f"history: {len(generations)} generations, {storage.get('stored_rows')} stored rows, "
            f"{storage.get('superseded', 0)} superseded; last run: {last.get('rows_in')} rows, "
            f"{last.get('reused')} reused, {last.get('new')} new, {last.get('changed')} changed, "
            f"{last.get('skipped')} skipped"
        )
    files = dataset_files(root, manifest, cfg)
    if not files:
        return lines
    try:
        known = {r.sample_id for r in read_split_rows(files)}
    except DistillError as exc:
        return [*lines, f"dataset {', '.join(files)} unreadable ({exc})"]
    gone = [sid for sid in sample_ids if sid not in known]
    if gone:
        more = f" and {len(gone) - SHOWN} more" if len(gone) > SHOWN else ""
        lines.append(
            f"{len(gone)} cached rows are not in {', '.join(files)} (kept; `distill cache --compact` "
            f"drops them): {', '.join(gone[:SHOWN])}{more}"
        )
    return lines
