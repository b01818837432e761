"""Dataset rows: reading ms-swift ``messages`` + ``images`` JSONL, stable sample ids, image checks.

A row on disk::

    {"sample_id": "train-00000",
     "messages": [{"role": "user", "content": "<image>Describe the image."},
                  {"role": "assistant", "content": "a large red circle at the top left."}],
     "images": ["images/train-00000.png"]}

Image paths are relative to the JSONL file's directory (absolute paths are kept as they are), so a
dataset directory can move between machines and DVC remotes. URLs (``http://...``) are kept as they
are and refused as ``remote_image``: nothing here downloads, and an image must be hashed into the
cache fingerprint. ``sample_id`` is optional on input; ``prepare`` assigns a stable one from the
row's content.

Every stage starts with the same fast pass, :func:`partition_rows`: each line becomes a usable
``Row`` or a ``BadRow`` with its reason (images opened, response present), and :func:`require_rows`
refuses a split with no usable row, naming the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import DataError
from pipeline.hashing import file_sha256

IMAGE_TAG = "<image>"

# Skip reasons (short codes recorded in the cache manifest).
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
EMPTY_RESPONSE = "empty_response"
NON_UTF8 = "non_utf8"
BAD_ROW = "bad_row"
TRUNCATED = "truncated_by_max_length"
ENCODE_FAILED = "encode_failed"
REMOTE_IMAGE = "remote_image"

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str) -> bool:
    """True for a URL such as ``http://host/x.png`` (never read from disk)."""
    return bool(_URL.match(path))


@dataclass
class Row:
    """One dataset row, with image paths resolved to absolute paths."""

    sample_id: str
    messages: list[dict[str, Any]]
    images: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "file:line" for error messages

    def swift_inputs(self) -> dict[str, Any]:
        """The dict ms-swift's ``template.encode`` takes."""
        out: dict[str, Any] = {"messages": [dict(m) for m in self.messages]}
        if self.images:
            out["images"] = list(self.images)
        return out

    def response(self) -> str:
        """The last assistant message (the supervised caption)."""
        for m in reversed(self.messages):
            if m.get("role") == "assistant":
                return str(m.get("content") or "")
        return ""


@dataclass
class BadRow:
    """A line that could not become a ``Row`` (e.g. non-UTF-8 bytes); kept so counts reconcile."""

    sample_id: str
    reason: str
    detail: str
    source: str


def _content_id(obj: dict[str, Any], prefix: str) -> str:
    blob = json.dumps({"messages": obj.get("messages"), "images": obj.get("images")}, sort_keys=True)
    return f"{prefix}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def iter_rows(path: str | Path, id_prefix: str | None = None) -> Iterator[Row | BadRow]:
    """Yield a ``Row`` (or a ``BadRow``) per non-empty line of a JSONL file.

    Structural problems that make a row meaningless (not JSON, no messages) are ``BadRow`` entries
    with a reason, never silently dropped, so ``rows in = cached + skipped`` can hold downstream.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    base = path.parent
    prefix = id_prefix or path.stem
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            source = f"{path}:{lineno}"
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield BadRow(f"{prefix}-line{lineno:06d}", NON_UTF8, f"field <line>: {exc}", source)
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield BadRow(f"{prefix}-line{lineno:06d}", BAD_ROW, f"not JSON: {exc}", source)
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
                yield BadRow(
                    f"{prefix}-line{lineno:06d}", BAD_ROW, "field 'messages' missing or not a list", source
                )
                continue
            sample_id = str(obj.get("sample_id") or _content_id(obj, prefix))
            images = obj.get("images") or []
            if isinstance(images, str):
                images = [images]
            if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
                yield BadRow(sample_id, BAD_ROW, "field 'images' must be a list of image paths", source)
                continue
            resolved = [
                p if is_remote(p) or Path(p).is_absolute() else str((base / p).resolve()) for p in images
            ]
            extra = {k: v for k, v in obj.items() if k not in ("sample_id", "messages", "images")}
            yield Row(sample_id, obj["messages"], resolved, extra, source)


def read_rows(path: str | Path) -> list[Row | BadRow]:
    """All rows of a JSONL file; duplicate sample ids are an error naming both lines."""
    rows = list(iter_rows(path))
    seen: dict[str, str] = {}
    for r in rows:
        if r.sample_id in seen:
            raise DataError(
                f"{r.source}: field 'sample_id': duplicate id {r.sample_id!r} (first at {seen[r.sample_id]})"
            )
        seen[r.sample_id] = r.source
    return rows


def check_row(row: Row, need_response: bool = True) -> tuple[str, str] | None:
    """Return ``(reason, detail)`` if the row cannot be encoded, else None. Opens each image.

    ``need_response=False`` accepts a row without an assistant response (one whose response the
    teacher will write).
    """
    if need_response and not row.response().strip():
        return EMPTY_RESPONSE, "field 'messages[-1].content': empty assistant response"
    n_tags = sum(str(m.get("content") or "").count(IMAGE_TAG) for m in row.messages)
    if n_tags != len(row.images):
        return BAD_ROW, f"field 'images': {len(row.images)} images for {n_tags} <image> tags"
    for i, img in enumerate(row.images):
        if is_remote(img):
            return (
                REMOTE_IMAGE,
                f"field 'images[{i}]': {img}: remote images are not fetched; download the file and "
                "give its path (relative to the JSONL file)",
            )
        if not Path(img).is_file():
            return MISSING_IMAGE, f"field 'images[{i}]': file not found: {img}"
        try:
            from PIL import Image

            with Image.open(img) as im:
                im.load()
        except Exception as exc:  # PIL raises many types for a bad file
            return UNREADABLE_IMAGE, f"field 'images[{i}]': {img}: {type(exc).__name__}: {exc}"
    return None


def partition_rows(
    rows: Sequence[Row | BadRow], need_response: bool = True, strict: bool = False
) -> tuple[list[Row], list[BadRow]]:
    """Split rows into usable ``Row``s and ``BadRow``s carrying their reason (``check_row`` on each row).

    With ``strict`` the first unusable row raises ``DataError`` naming its file, line and sample.
    """
    usable: list[Row] = []
    bad: list[BadRow] = []
    for r in rows:
        if isinstance(r, Row):
            problem = check_row(r, need_response=need_response)
            if problem is None:
                usable.append(r)
                continue
            r = BadRow(r.sample_id, problem[0], problem[1], r.source)
        if strict:
            raise DataError(f"{r.source}: sample {r.sample_id!r}: {r.reason}: {r.detail}")
        bad.append(r)
    return usable, bad


def count_reasons(rows: Sequence[BadRow]) -> dict[str, int]:
    """Reason code -> number of rows, sorted by code."""
    return dict(sorted(Counter(r.reason for r in rows).items()))


def require_rows(path: str | Path, usable: int, bad: Sequence[BadRow], what: str = "usable rows") -> None:
    """Refuse a split with no usable row: ``DataError`` naming the file and why its lines were unusable."""
    if usable:
        return
    if not bad:
        raise DataError(f"{path}: no {what}: the file holds no rows")
    reasons = ", ".join(f"{k}: {v}" for k, v in count_reasons(bad).items())
    raise DataError(
        f"{path}: no {what}: all {len(bad)} rows are unusable ({reasons}); first: {bad[0].source}"
    )


def dataset_hash(path: str | Path) -> str:
    """Content hash of a JSONL file and every image it names (missing images hash as absent)."""
    h = hashlib.sha256()
    path = Path(path)
    h.update(path.read_bytes())
    for r in iter_rows(path):
        if isinstance(r, Row):
            for img in r.images:
                h.update(img.rsplit("/", 1)[-1].encode())
                h.update(file_sha256(img).encode() if Path(img).is_file() else b"<missing>")
    return h.hexdigest()


def write_rows(rows: list[Row], path: str | Path) -> None:
    """Write rows as JSONL with image paths relative to ``path``'s directory where possible."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            images = [os.path.relpath(p, base) for p in r.images]
            obj = {"sample_id": r.sample_id, "messages": r.messages, "images": images, **r.extra}
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
