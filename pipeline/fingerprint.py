"""Cache fingerprint: everything that determines the teacher's cached distributions.

The fingerprint holds no paths, timestamps or other run-dependent values, so the same teacher,
tokenizer and encoding settings give the same fingerprint on any machine, whatever the dataset. The cache stage
writes it into ``manifest.json``; the trainer recomputes it from its own config and the reader
refuses a cache whose fingerprint differs, listing the differing fields.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError
from pipeline.hashing import file_sha256

if TYPE_CHECKING:
    from pipeline.config import DistillConfig
    from pipeline.encoding import RowEncoder

# What a checkpoint's weights are stored as (transformers' two naming schemes, sharded or not). Other
# files a trainer saves beside them (training_args.bin, optimizer.pt, rng_state.pth, ...) do not change
# the teacher's logits, so they stay out of the fingerprint: re-saving trainer state keeps the cache.
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


@lru_cache(maxsize=64)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime so a process hashes each multi-GB weight file once.
    return file_sha256(path)


def weight_files(model_dir: Path) -> list[Path]:
    """The weight files of a checkpoint directory, in name order: ``*.safetensors`` when there are any
    (a directory holding both formats loads those), else ``pytorch_model*.bin``."""
    for pattern in _WEIGHT_PATTERNS:
        files = sorted(p for p in model_dir.glob(pattern) if p.is_file())
        if files:
            return files
    return []


def model_dir_hash(model_dir: str | Path) -> dict[str, str]:
    """sha256 of a checkpoint's ``config.json`` and of its weight files (nothing else in the directory)."""
    d = Path(model_dir)
    if not d.is_dir():
        raise ConfigError(f"model directory not found: {d}")
    weights = hashlib.sha256()
    files = weight_files(d)
    if not files:
        raise ConfigError(f"{d}: no weight files ({' or '.join(_WEIGHT_PATTERNS)})")
    for p in files:
        st = p.stat()
        weights.update(p.name.encode())
        weights.update(_file_hash(str(p), st.st_size, st.st_mtime_ns).encode())
    config = d / "config.json"
    return {
        "config_sha256": file_sha256(config) if config.is_file() else "",
        "weights_sha256": weights.hexdigest(),
    }


def tokenizer_hash(tokenizer: Any) -> dict[str, Any]:
    """Hash of vocab, merges and special tokens (the backend JSON) and of the chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    template = getattr(tokenizer, "chat_template", None) or ""
    specials = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
    return {
        "vocab_merges_sha256": hashlib.sha256(blob.encode()).hexdigest(),
        "chat_template_sha256": hashlib.sha256(str(template).encode()).hexdigest(),
        "special_tokens_sha256": hashlib.sha256(specials.encode()).hexdigest(),
        "len": len(tokenizer),
    }


def teacher_path(cfg: DistillConfig) -> str:
    """The teacher's directory or hub id, decided by ``config.model_location`` (a missing local path
    is a ``ConfigError`` naming ``rlhf.teacher_model``)."""
    from pipeline.config import model_location

    if cfg.rlhf is None or not cfg.rlhf.teacher_model:
        raise ConfigError(
            f"{cfg.source_files[-1] if cfg.source_files else 'config'}: key 'rlhf.teacher_model': "
            "the cache needs a teacher checkpoint"
        )
    return model_location(cfg.rlhf.teacher_model, "rlhf.teacher_model", cfg.config_path)


def effective_top_k(cfg: DistillConfig, encoder: RowEncoder) -> int:
    """The k a cache stores: a k above the real vocabulary keeps every real id, so 100000 and the
    vocabulary size are the same cache (recorded, written and compared as the vocabulary size)."""
    return min(cfg.custom.top_k, len(encoder.tokenizer))


def build_fingerprint(cfg: DistillConfig, encoder: RowEncoder) -> dict[str, Any]:
    """The distribution settings of a cache for ``cfg``, encoded by ``encoder``: what makes two caches
    interchangeable, and what a cache must match exactly to serve a run.

    The dataset is not among them: rows are keyed one by one (``sample_id`` and encoding hash), so one
    cache serves any dataset whose rows it holds (:func:`dataset_record` records what it was built
    from). Teacher-written responses add their generation settings (absent when off, so caches built
    without them keep their fingerprint).
    """
    written = {}
    if cfg.custom.written_responses != "off":
        c = cfg.custom
        written["written_responses"] = {
            "mode": c.written_responses,
            "temperature": c.written_temperature,
            "seed": c.written_seed if c.written_temperature > 0 else None,
            "max_new_tokens": c.written_max_new_tokens,
            "unfinished": c.written_unfinished,
        }
    return {
        **written,
        "teacher": model_dir_hash(teacher_path(cfg)),
        "teacher_dtype": cfg.model.torch_dtype,
        "tokenizer": tokenizer_hash(encoder.tokenizer),
        "encoding": encoder.settings(),
        "top_k": effective_top_k(cfg, encoder),
        "loss_temperature": cfg.custom.loss_temperature,
        "logprob_encoding": cfg.custom.logprob_encoding,
    }


def student_writer(cfg: DistillConfig) -> str | None:
    """The student checkpoint directory that writes ``cfg``'s responses (``custom.written_by``), or
    ``None`` when the teacher writes them (or nothing is written). A missing directory is a
    ``ConfigError`` naming the key."""
    from pipeline.config import model_location

    c = cfg.custom
    if c.written_by == "teacher" or c.written_responses == "off":
        return None
    where = model_location(c.written_by, "custom.written_by", cfg.config_path)
    if not Path(where).is_dir():
        raise ConfigError(
            f"{cfg.config_path or 'config'}: custom.written_by: {c.written_by!r} is a hub id; a student "
            "writer is a local checkpoint directory"
        )
    return where


def writer_record(cfg: DistillConfig) -> dict[str, Any] | None:
    """What identifies a student writer: its checkpoint's config and weights digests
    (:func:`model_dir_hash`) and ``custom.written_round``; ``None`` when the teacher writes. No
    path: the same checkpoint anywhere is the same writer."""
    where = student_writer(cfg)
    if where is None:
        return None
    return {"writer": "student", **model_dir_hash(where), "round": cfg.custom.written_round}


def writer_key(record: dict[str, Any] | None) -> str | None:
    """sha256 of a :func:`writer_record` (``None`` for the teacher): mixed into each written row's
    digest, so another writer or round re-writes the row and the same one reuses it."""
    if record is None:
        return None
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def dataset_record(files: list[str], rows_in: int) -> dict[str, Any]:
    """What one generation of a cache was built from: each split file's name and sha256, and the
    rows in. A record, never compared (images are covered row by row, by each row's digest and
    encoding hash)."""
    return {
        "files": [{"file": Path(f).name, "sha256": file_sha256(f)} for f in files],
        "rows_in": rows_in,
    }
