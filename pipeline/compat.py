"""Teacher/student compatibility: checked before any compute (``distill check``, caching, training).

Distillation compares distributions token by token, so teacher and student must share the tokenizer
(vocab, merges, special tokens, chat template) and compatible image processing; a few dataset rows
must encode to the same ids and labels with either side's processor. A mismatch is one explicit
``CompatibilityError`` naming what differs, never silent padding. Different logit widths from padded
embedding rows (e.g. 151936 vs 152064) are fine: they are not part of the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import CompatibilityError, DataError

if TYPE_CHECKING:
    from pipeline.config import DistillConfig

_PROCESSOR_FIELDS = (
    "patch_size",
    "merge_size",
    "temporal_patch_size",
    "min_pixels",
    "max_pixels",
    "image_mean",
    "image_std",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "size",
)


def _backend_parts(tok: Any) -> dict[str, Any]:
    backend = json.loads(tok.backend_tokenizer.to_str()) if hasattr(tok, "backend_tokenizer") else {}
    model = backend.get("model", {})
    return {
        "vocab": tok.get_vocab(),
        "merges": model.get("merges"),
        "special tokens": sorted(str(t) for t in getattr(tok, "all_special_tokens", [])),
        "added tokens": sorted((t["content"], t["id"]) for t in backend.get("added_tokens", [])),
        "chat template": getattr(tok, "chat_template", None),
    }


def compare_tokenizers(teacher_tok: Any, student_tok: Any) -> list[str]:
    """Human-readable differences between two tokenizers (empty when identical)."""
    t, s = _backend_parts(teacher_tok), _backend_parts(student_tok)
    diffs = []
    for key in t:
        if t[key] != s[key]:
            if key == "vocab":
                only_t = sorted(set(t[key].items()) - set(s[key].items()))[:3]
                only_s = sorted(set(s[key].items()) - set(t[key].items()))[:3]
                diffs.append(
                    f"vocab differs (sizes {len(t[key])} vs {len(s[key])}; teacher-only e.g. {only_t}, "
                    f"student-only e.g. {only_s})"
                )
            else:
                diffs.append(f"{key} differ")
    return diffs


def compare_image_processors(teacher_proc: Any, student_proc: Any) -> list[str]:
    t, s = getattr(teacher_proc, "image_processor", None), getattr(student_proc, "image_processor", None)
    if t is None and s is None:
        return []
    if (t is None) != (s is None):
        return ["only one side has an image processor"]
    diffs = []
    for name in _PROCESSOR_FIELDS:
        a, b = getattr(t, name, None), getattr(s, name, None)
        if json.dumps(a, default=str, sort_keys=True) != json.dumps(b, default=str, sort_keys=True):
            diffs.append(f"image processor {name}: teacher {a!r} vs student {b!r}")
    return diffs


def check_pair(cfg: DistillConfig, n_rows: int = 4) -> str:
    """Raise ``CompatibilityError`` unless teacher and student can be distilled together. Returns a report."""
    from pipeline.config import model_location
    from pipeline.data import Row, read_rows
    from pipeline.encoding import RowEncoder, first_encoding_difference
    from pipeline.fingerprint import teacher_path
    from pipeline.processors import load_processor

    if cfg.rlhf is None or not cfg.rlhf.teacher_model:
        raise CompatibilityError("no teacher configured (rlhf.teacher_model)")
    from pipeline.trust import STUDENT_KEY, TEACHER_KEY, require_trusted

    teacher = teacher_path(cfg)
    student = model_location(cfg.model.model, "model.model", cfg.config_path)
    require_trusted(teacher, cfg.custom.teacher_trust_remote_code, TEACHER_KEY)
    require_trusted(student, cfg.model.trust_remote_code, STUDENT_KEY)
    t_proc = load_processor(teacher, cfg.rlhf.teacher_model_type or cfg.model.model_type)
    s_proc = load_processor(student, cfg.model.model_type)
    t_tok = getattr(t_proc, "tokenizer", t_proc)
    s_tok = getattr(s_proc, "tokenizer", s_proc)
    diffs = compare_tokenizers(t_tok, s_tok) + compare_image_processors(t_proc, s_proc)
    if diffs:
        raise CompatibilityError(
            f"teacher {cfg.rlhf.teacher_model} and student {cfg.model.model} are incompatible: "
            + "; ".join(diffs)
        )
    t_enc = RowEncoder.from_config(cfg, processor=t_proc)
    s_enc = RowEncoder.from_config(cfg, processor=s_proc)
    checked = 0
    # Parseable rows only: an unparseable line is the cache stage's to skip (or refuse with --strict).
    rows = [r for f in cfg.data.dataset for r in read_rows(f) if isinstance(r, Row)]
    for row in rows[: max(n_rows * 4, n_rows)]:
        try:
            a = s_enc.encode(row)
        except DataError:
            continue  # a bad row is the cache stage's business, not a compatibility problem
        b = t_enc.encode(row)
        if a.encoding_hash != b.encoding_hash:
            raise CompatibilityError(
                f"sample {row.sample_id!r} encodes differently for teacher and student: "
                f"{first_encoding_difference(a, b, ('student', 'teacher'))}"
            )
        checked += 1
        if checked >= n_rows:
            break
    return (
        f"compatible: tokenizer identical ({len(s_tok)} tokens), image processors agree, "
        f"{checked} rows encode identically for teacher and student" + _heads(teacher, student)
    )


def _heads(teacher: Any, student: Any) -> str:
    """``; logit widths: teacher 152064 (untied), student 151936 (tied)`` from both config.json files
    (padded widths differ legitimately); empty when either side is not a local directory."""
    parts = []
    for side, where in (("teacher", teacher), ("student", student)):
        path = Path(where) / "config.json"
        if not path.is_file():
            return ""
        raw = json.loads(path.read_text(encoding="utf-8"))
        width = raw.get("text_config", {}).get("vocab_size", raw.get("vocab_size"))
        parts.append(f"{side} {width} ({'tied' if raw.get('tie_word_embeddings') else 'untied'})")
    return "; logit widths: " + ", ".join(parts)


def check_config(cfg: DistillConfig) -> str:
    """``distill check``: the pair check for configs that name a teacher."""
    return check_pair(cfg)
