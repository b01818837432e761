"""Dataset rows: reading ms-swift ``messages`` + ``images`` JSONL, stable sample ids, image checks.

A row on disk::

    {"sample_id": "train-00000",
     "messages": [{"role": "user", "content": "<image>Describe the image."},
                  {"role": "assistant", "content": "a large red circle at the top left."}],
     "images": ["images/train-00000.png"]}

Image paths are relative to the JSONL file's directory (absolute paths are kept as they are), so a
dataset directory can move between machines and DVC remotes. URLs (``http://...``) are kept as they
are and refused as ``remote_image``: nothing here downloads, and an image must be hashed into the
cache fingerprint. ``sample_id`` is optional on input; a row without one gets an id from its content
(:func:`content_id`), never from the file's name or place, which ``prepare`` writes into the row.

Every stage starts with the same fast pass, :func:`partition_rows`: each line becomes a usable
``Row`` or a ``BadRow`` with its reason (images opened, response present), and :func:`require_rows`
refuses a split with no usable row, naming the file.
"""

from __future__ import annotations

import codecs
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
PROMPT_ONLY = "prompt_only_in_labelled_split"

# Every reason a row can be left out for, wherever it is decided (prepare, cache, training): one table,
# so a row gets one code everywhere; docs/troubleshooting.md's reason list is checked against it.
SKIP_REASONS: dict[str, str] = {
    BAD_ROW: "the line is not a JSON object with a messages list, a message has an unknown role, "
    "or images and <image> tags do not pair up",
    NON_UTF8: "the line is not UTF-8",
    MISSING_IMAGE: "an image file does not exist",
    UNREADABLE_IMAGE: "an image file does not open as an image",
    REMOTE_IMAGE: "an image is a URL (nothing is downloaded)",
    PROMPT_ONLY: "the row has no assistant turn (a prompt only) and no response is written for it",
    EMPTY_RESPONSE: "the assistant turn is empty",
    TRUNCATED: "the row does not fit max_length",
    ENCODE_FAILED: "the template could not encode the row",
    "written_unfinished": "a teacher-written response hit written_max_new_tokens (written_unfinished: skip)",
    "written_empty": "the teacher wrote an empty response",
    "not_cached": "training on a partial cache: the cache does not hold the row (allow_partial_cache)",
}

# ms-swift's message roles; any other role (a typo such as "assistnat") makes the row a bad_row.
ROLES = frozenset({"system", "user", "assistant", "tool", "tool_call", "tool_response"})

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


def content_id(obj: dict[str, Any], occurrence: int = 0) -> str:
    """The generated ``sample_id`` of a row that has none: ``row-`` and 12 hex digits of the sha1 of its
    messages and images (as written, so relative image paths), never of the file's name or place, so
    a copy or a renamed file keeps its ids. The n-th identical row of a file (n >= 1, counting from 0)
    gets ``-n`` appended, so duplicates stay distinct and the first one keeps the plain id."""
    blob = json.dumps({"messages": obj.get("messages"), "images": obj.get("images")}, sort_keys=True)
    base = f"row-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"
    return f"{base}-{occurrence}" if occurrence else base


_LEGACY_ID = re.compile(r"^.+-(?:[0-9a-f]{12}|line\d{6})$")


def legacy_id_hint(ids: Sequence[str]) -> str:
    """What to do when a cache's ids look generated the old way (``<file stem>-<hash>``, before ids
    stopped depending on the file's name); empty otherwise."""
    if not ids or not all(_LEGACY_ID.match(i) and not i.startswith(("row-", "line-")) for i in ids):
        return ""
    return (
        " (its ids look generated from a file name; generated ids now come from each row's content "
        "and line, so run `distill cache` again to rebuild it, ideally on a `distill prepare`d file, "
        "whose ids are written in)"
    )


def _role_problem(messages: list[Any]) -> str | None:
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            return f"field 'messages[{i}].role': {role!r} is not one of {', '.join(sorted(ROLES))}"
    return None


def iter_rows(path: str | Path) -> Iterator[Row | BadRow]:
    """Yield a ``Row`` (or a ``BadRow``) per non-empty line of a JSONL file.

    Structural problems that make a row meaningless (not JSON, no messages) are ``BadRow`` entries
    with a reason, never silently dropped, so ``rows in = cached + skipped`` can hold downstream.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    base = path.parent
    seen: Counter[str] = Counter()  # generated ids so far: the occurrence index of identical rows
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            source = f"{path}:{lineno}"
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]  # Windows editors save one; utf-8-sig drops it too
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield BadRow(f"line-{lineno:06d}", NON_UTF8, f"field <line>: {exc}", source)
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield BadRow(f"line-{lineno:06d}", BAD_ROW, f"not JSON: {exc}", source)
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
                yield BadRow(f"line-{lineno:06d}", BAD_ROW, "field 'messages' missing or not a list", source)
                continue
            if obj.get("sample_id"):
                sample_id = str(obj["sample_id"])
            else:
                generated = content_id(obj)
                sample_id, seen[generated] = content_id(obj, seen[generated]), seen[generated] + 1
            if (role := _role_problem(obj["messages"])) is not None:
                yield BadRow(sample_id, BAD_ROW, role, source)
                continue
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
    if need_response and (not row.messages or row.messages[-1].get("role") != "assistant"):
        # The same code the cache stage gives such a row, so prepare and cache agree on it.
        return (
            PROMPT_ONLY,
            f"field 'messages[{len(row.messages) - 1}]': the row ends without an assistant turn",
        )
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


def read_split_rows(files: Sequence[str | Path]) -> list[Row | BadRow]:
    """All rows of a split made of several JSONL files, in file order. A sample_id names one row of
    the split: one repeated in another file is a ``DataError`` naming both lines (within one file,
    :func:`read_rows` refuses it)."""
    rows: list[Row | BadRow] = []
    seen: dict[str, str] = {}
    for f in files:
        for r in read_rows(f):
            if r.sample_id in seen:
                raise DataError(
                    f"{r.source}: field 'sample_id': duplicate id {r.sample_id!r} (first at "
                    f"{seen[r.sample_id]}): the split's files must not share sample ids"
                )
            seen[r.sample_id] = r.source
            rows.append(r)
    return rows
