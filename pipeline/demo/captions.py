"""The demo captioning language: object vocabulary, reference captions, parsing and object-level F1.

A scene object is ``(shape, colour, size, position, image)``; ``image`` is the 0-based index of the
image the object sits in (always 0 for single-image rows). A reference caption lists every object in
a fixed order (image, then position in reading order), one sentence each::

    a large red circle at the top left. a small blue square at the bottom right.

Rows with several images prefix each image's sentences with ``image N:`` (1-based)::

    image 1: a small green triangle at the top right. image 2: a large yellow circle at the bottom left.

Pure Python on purpose: evaluation imports this module without pulling in torch or PIL.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import NamedTuple

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SIZES: tuple[str, ...] = ("large", "small")
# Reading order; the index is the cell index in the 2x2 grid (row-major).
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")


class DemoObject(NamedTuple):
    """One object of a synthetic scene. Two objects match only when every field agrees."""

    shape: str
    colour: str
    size: str
    position: str
    image: int = 0


def sort_key(obj: DemoObject) -> tuple[int, int]:
    """Caption order: by image, then by cell in reading order."""
    return obj.image, POSITIONS.index(obj.position)


def object_sentence(obj: DemoObject) -> str:
    """``a large red circle at the top left.``"""
    return f"a {obj.size} {obj.colour} {obj.shape} at the {obj.position}."


def format_caption(objects: Iterable[DemoObject], n_images: int = 1) -> str:
    """The reference caption of ``objects`` (any order in, canonical order out)."""
    ordered = sorted(objects, key=sort_key)
    if n_images == 1:
        return " ".join(object_sentence(o) for o in ordered)
    parts = []
    for image in range(n_images):
        sentences = " ".join(object_sentence(o) for o in ordered if o.image == image)
        parts.append(f"image {image + 1}: {sentences}")
    return " ".join(parts)


_WORD = r"[a-z]+"
# Tolerant on purpose: any whitespace, optional article and "at the", missing full stop. Generated
# captions from a half-trained model are often almost right, and partial credit is what F1 is for.
_OBJECT_RE = re.compile(
    rf"(?:\ban?\s+)?\b(?P<size>{_WORD})\s+(?P<colour>{_WORD})\s+(?P<shape>{_WORD})\s+(?:at\s+)?(?:the\s+)?"
    rf"(?P<position>(?:top|bottom)\s+(?:left|right))\b"
)
_IMAGE_RE = re.compile(r"\bimage\s+(\d+)\s*:")


def parse_caption(text: str) -> list[DemoObject]:
    """Every well-formed object mention in ``text``, in order of appearance.

    Junk between mentions is skipped; a mention with a word outside the vocabulary is dropped rather
    than guessed. ``image N:`` markers set the ``image`` field of the mentions that follow them
    (``N - 1``); text before the first marker belongs to image 0.
    """
    lowered = text.lower()
    markers = [(m.start(), int(m.group(1)) - 1) for m in _IMAGE_RE.finditer(lowered)]
    found = []
    for m in _OBJECT_RE.finditer(lowered):
        size, colour, shape = m.group("size"), m.group("colour"), m.group("shape")
        position = " ".join(m.group("position").split())
        if size not in SIZES or colour not in COLOURS or shape not in SHAPES:
            continue
        image = 0
        for start, index in markers:
            if start < m.start():
                image = max(index, 0)
        found.append(DemoObject(shape, colour, size, position, image))
    return found


def match_count(predicted: Sequence[DemoObject], reference: Sequence[DemoObject]) -> int:
    """Size of the multiset intersection: a duplicated prediction matches at most once per reference."""
    return sum((Counter(predicted) & Counter(reference)).values())


def _ratios(matched: int, n_predicted: int, n_reference: int) -> tuple[float, float, float]:
    # Conventions for empty sides: nothing predicted and nothing expected is a perfect answer;
    # predicting nothing against a non-empty reference has precision 1 (no false claims), recall 0.
    precision = matched / n_predicted if n_predicted else 1.0
    recall = matched / n_reference if n_reference else 1.0
    if n_predicted == 0 and n_reference == 0:
        return 1.0, 1.0, 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def object_f1(predicted: Sequence[DemoObject], reference: Sequence[DemoObject]) -> tuple[float, float, float]:
    """``(precision, recall, f1)`` of one prediction; objects match only when all fields agree."""
    return _ratios(match_count(predicted, reference), len(predicted), len(reference))


def corpus_object_f1(
    pairs: Iterable[tuple[Sequence[DemoObject], Sequence[DemoObject]]],
) -> dict[str, float]:
    """Micro-averaged scores over ``(predicted, reference)`` pairs: counts are summed over the corpus.

    Returns ``precision``, ``recall``, ``f1``, ``hallucination_rate`` (predicted objects that are not in
    the reference / predicted objects; 0 when nothing was predicted), and the raw counts.
    """
    matched = n_predicted = n_reference = 0
    for predicted, reference in pairs:
        matched += match_count(predicted, reference)
        n_predicted += len(predicted)
        n_reference += len(reference)
    precision, recall, f1 = _ratios(matched, n_predicted, n_reference)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "hallucination_rate": hallucination_rate_from_counts(matched, n_predicted),
        "matched": float(matched),
        "predicted": float(n_predicted),
        "reference": float(n_reference),
    }


def hallucination_rate_from_counts(matched: int, n_predicted: int) -> float:
    """Unmatched predictions / predictions; 0 when nothing was predicted (nothing was invented)."""
    return (n_predicted - matched) / n_predicted if n_predicted else 0.0


def hallucination_rate(predicted: Sequence[DemoObject], reference: Sequence[DemoObject]) -> float:
    """Fraction of predicted objects with no counterpart in the reference (multiset matching)."""
    return hallucination_rate_from_counts(match_count(predicted, reference), len(predicted))


def objects_from_records(records: Iterable[dict[str, object]]) -> list[DemoObject]:
    """Objects from a row's JSON ``objects`` field (a list of dicts with the DemoObject fields)."""
    return [
        DemoObject(
            str(r["shape"]), str(r["colour"]), str(r["size"]), str(r["position"]), int(str(r.get("image", 0)))
        )
        for r in records
    ]
