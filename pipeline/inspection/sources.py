"""Where a cache's inputs are now: its tokenizer, its dataset rows (and images), its row encoder.

The fingerprint holds hashes, never paths (a path is not content). The cache stage also records where
the inputs were under the manifest's ``sources`` (``tokenizer``, ``dataset``, ``config``); inspection
uses such a path only while what it finds there still hashes as the fingerprint says, and otherwise
says how to point at the right one. Explicit arguments (``--tokenizer``, ``--config``) always win.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.cache.cachedir import Manifest
from pipeline.errors import ConfigError, DistillError

TOKENIZER_HINT = "pass --tokenizer DIR (the student model or tokenizer directory) or --config"


def load_tokenizer(path: str | Path, trusted: bool = False) -> Any:
    """The tokenizer saved in ``path`` (a model or tokenizer directory); ``ConfigError`` if unreadable
    or if it ships code and ``trusted`` (the config's ``model.trust_remote_code``) is false."""
    from transformers import AutoTokenizer

    from pipeline.config import model_location
    from pipeline.trust import STUDENT_KEY, require_trusted

    local = model_location(str(path), "--tokenizer")  # a missing local dir never goes to the hub
    if Path(local).is_dir():  # a hub id: transformers itself refuses its code unless trusted
        require_trusted(local, trusted, STUDENT_KEY)
    try:
        return AutoTokenizer.from_pretrained(local, trust_remote_code=trusted)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"--tokenizer {path}: cannot load a tokenizer ({type(exc).__name__}: {exc})"
        ) from exc


def recorded_sources(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``sources`` (empty for caches written before they were recorded)."""
    return Manifest(manifest).sources


def resolve_tokenizer(manifest: dict[str, Any], path: Path | None = None, cfg: Any = None) -> tuple[Any, str]:
    """(tokenizer or None, a note for the user; empty when nothing needs saying).

    Order: ``path`` (``--tokenizer``), the config's student model, then the tokenizer recorded in the
    manifest's ``sources`` if it still hashes as the fingerprint's ``tokenizer`` entry.
    """
    from pipeline.cache.manifest import compare_fingerprints
    from pipeline.fingerprint import tokenizer_hash

    trusted = bool(getattr(getattr(cfg, "model", None), "trust_remote_code", False))
    if path is not None:
        return load_tokenizer(path, trusted), ""
    model = getattr(getattr(cfg, "model", None), "model", None)
    if model and Path(model).is_dir():
        try:
            return load_tokenizer(model, trusted), ""
        except ConfigError as exc:
            return None, f"note: showing token ids ({exc})"
    where = recorded_sources(manifest).get("tokenizer")
    if not where:
        return None, f"note: showing token ids (the manifest records no tokenizer location: {TOKENIZER_HINT})"
    if not Path(where).is_dir():
        return None, f"note: showing token ids (the cache's tokenizer {where} is gone: {TOKENIZER_HINT})"
    try:
        tokenizer = load_tokenizer(where, trusted)
    except ConfigError as exc:
        return None, f"note: showing token ids ({exc}; {TOKENIZER_HINT})"
    recorded = Manifest(manifest).fingerprint.get("tokenizer")
    diffs = compare_fingerprints(recorded, tokenizer_hash(tokenizer)) if isinstance(recorded, dict) else {}
    if diffs:
        return None, (
            f"note: showing token ids (the tokenizer at {where} changed since caching: "
            f"{', '.join(diffs)} differ; {TOKENIZER_HINT})"
        )
    return tokenizer, f"token text from {where} (recorded at cache time, same hash)"


@dataclass
class RowSource:
    """The dataset rows behind a cache, and an encoder that reproduces its encodings (either may be absent).

    ``rows`` maps sample_id -> :class:`pipeline.data.Row`; ``encoder`` is a ``RowEncoder`` whose
    settings equal the fingerprint's ``encoding`` entry; ``notes`` say what is missing and why.
    """

    rows: dict[str, Any]
    encoder: Any
    notes: list[str]


def resolve_rows(manifest: dict[str, Any], cfg: Any = None, *, want_encoder: bool = True) -> RowSource:
    """Rows from the config's dataset files or the manifest's recorded dataset; an encoder from the
    config or the recorded config (``want_encoder``: building one imports ms-swift, ~10 s)."""
    from pipeline.data import Row, read_rows

    notes: list[str] = []
    sources = recorded_sources(manifest)
    files: list[str] = []
    if cfg is not None:
        files = [*(cfg.data.dataset or []), *(cfg.data.val_dataset or [])]
    elif sources.get("dataset") and Path(sources["dataset"]).is_file():
        files = [sources["dataset"]]
        if _dataset_changed(manifest, files[0]):
            notes.append(f"the dataset {files[0]} changed since caching: images and text may not match")
    else:
        notes.append("no dataset rows (the recorded dataset is gone): pass --config for images and context")
    rows: dict[str, Any] = {}
    for f in files:
        try:
            found = read_rows(f)
        except DistillError as exc:
            notes.append(f"cannot read {f}: {exc}")
            continue
        for r in found:
            if isinstance(r, Row):
                rows.setdefault(r.sample_id, r)
    encoder = _encoder(manifest, cfg, notes) if want_encoder and rows else None
    return RowSource(rows=rows, encoder=encoder, notes=notes)


def _encoder(manifest: dict[str, Any], cfg: Any, notes: list[str]) -> Any:
    """A ``RowEncoder`` from ``cfg`` or the recorded config when its settings match the cache's."""
    from pipeline.cache.manifest import compare_fingerprints
    from pipeline.config import load_config
    from pipeline.encoding import RowEncoder
    from pipeline.inspection.audit import json_normal

    if cfg is None:
        recorded = recorded_sources(manifest).get("config") or []
        if not recorded or not Path(recorded[-1]).is_file():
            notes.append("no config to re-encode rows (pass --config): prompt context shown as dataset text")
            return None
        try:
            cfg = load_config(recorded[-1])
        except DistillError as exc:
            notes.append(f"the recorded config {recorded[-1]} no longer loads ({exc}): pass --config")
            return None
    try:
        encoder = RowEncoder.from_config(cfg)
    except (DistillError, OSError, ValueError) as exc:
        notes.append(f"cannot build the row encoder ({type(exc).__name__}: {exc}): pass --config")
        return None
    settings = Manifest(manifest).encoding or None
    diffs = (
        compare_fingerprints(settings, json_normal(encoder.settings())) if isinstance(settings, dict) else {}
    )
    if diffs:
        notes.append(
            f"the config encodes differently from the cache ({', '.join(list(diffs)[:3])}): no re-encoding"
        )
        return None
    return encoder


def _dataset_changed(manifest: dict[str, Any], path: str) -> bool:
    """Whether ``path`` differs from the dataset file the cache's last generation recorded (a cache
    from before generations recorded the hash in its fingerprint)."""
    from pipeline.data import dataset_hash, file_sha256

    record = Manifest(manifest)
    files = (record.last_generation.get("dataset") or {}).get("files") or []
    if files:
        return all(f.get("sha256") != file_sha256(path) for f in files)
    recorded = record.fingerprint.get("dataset_sha256")
    return bool(recorded) and dataset_hash(path) != recorded
