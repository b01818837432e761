"""The demo captioning language: object vocabulary, reference captions, parsing and object-level F1.

A scene object is ``(shape, colour, size, position, image)``; ``image`` is the 0-based index of the
image the object sits in (always 0 for single-image rows). A reference caption lists every object in
a fixed order (image, then position in reading order), one sentence each::

    a large red circle at the top left. a small blue square at the bottom right.

Rows with several images prefix each image's sentences with ``image N:`` (1-based)::

    image 1: a small green triangle at the top right. image 2: a large yellow circle at the bottom left.

That is the ``exact`` caption style: one valid caption per image, so a trained teacher is almost
certain of every token. Real dense captions are not like that: annotators and captioning models
describe one image in many valid ways. The ``varied`` style (``varied_caption``) samples, per row, a
sentence template, prepositions, size synonyms and optional extra detail, while everything the image
decides (which objects, their shape, colour, size and cell, how many there are) stays fixed::

    there are two objects. there is a big red circle in the top left corner and there is a little
    blue square in the bottom right corner.

``parse_caption`` reads every phrasing of both styles, so the object F1 rewards the objects named,
never one wording.

Pure Python on purpose: evaluation imports this module without pulling in torch or PIL.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from random import Random
from typing import Literal, NamedTuple

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SIZES: tuple[str, ...] = ("large", "small")
# Reading order; the index is the cell index in the 2x2 grid (row-major).
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")

CaptionStyle = Literal["exact", "varied"]
CAPTION_STYLES: tuple[str, ...] = ("exact", "varied")
# Varied style: interchangeable words for what the image decides. The first word is the canonical one
# (the exact style's); the parser maps every synonym back to it.
SIZE_WORDS: dict[str, tuple[str, ...]] = {"large": ("large", "big"), "small": ("small", "little")}
VERTICAL_WORDS: dict[str, tuple[str, ...]] = {"top": ("top", "upper"), "bottom": ("bottom", "lower")}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")
# Share of varied captions that name objects from the bottom right backwards. Measured on the 500-step
# demo teacher (test split, same scenes, cells in the exact words): reading order only, caption F1
# 0.59; half reversed, 0.25 (exact style: 0.94). Naming an object's cell in an order the image does
# not fix takes a lookup over the image tokens that this teacher does not learn in 500 steps, so the
# order stays fixed until a longer teacher is affordable.
REVERSED_ORDER_SHARE = 0.0


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


def _count_sentence(n: int, rng: Random) -> str:
    # Detail that the image decides (the count) in wording the captioner chooses.
    noun, verb = ("object", "is") if n == 1 else ("objects", "are")
    shapes = "shape" if n == 1 else "shapes"
    return rng.choice(
        [
            f"there {verb} {NUMBER_WORDS[n]} {noun}.",
            f"the image shows {NUMBER_WORDS[n]} {noun}.",
            f"{NUMBER_WORDS[n]} {shapes} on a grey background.",
        ]
    )


def _varied_mention(obj: DemoObject, template: str, prep: str, corner: bool, rng: Random) -> str:
    """One object, without its full stop; size synonyms are drawn per object, as captioners vary them.

    The cell is always named in the exact words and after the object. Position-first sentences ("in
    the upper left there is ...") and top/upper, bottom/lower synonyms are parsed but not written:
    with them the 500-step demo teacher never learned where objects sit (test F1 0.19, every object
    "at the top right"), while shape, colour and size stayed right.
    """
    size = rng.choice(SIZE_WORDS[obj.size])
    where = f"{prep} the {obj.position}" + (" corner" if corner else "")
    thing = f"a {size} {obj.colour} {obj.shape}"
    return f"there is {thing} {where}" if template == "there_is" else f"{thing} {where}"


def _varied_sentences(objects: list[DemoObject], rng: Random, compact: bool = False) -> str:
    """One image's objects in a sampled template; the last two may share a sentence.

    ``compact``: object-first sentences without ``corner``, as long in tokens as the exact style's.
    """
    ordered = sorted(objects, key=sort_key)
    if rng.random() < REVERSED_ORDER_SHARE:
        ordered.reverse()
    template = "object_first" if compact else rng.choice(("object_first", "there_is"))
    prep = rng.choice(("at", "in"))
    corner = not compact and rng.random() < 0.3
    mentions = [_varied_mention(o, template, prep, corner, rng) for o in ordered]
    if len(mentions) > 1 and rng.random() < 0.4:
        mentions[-2:] = [f"{mentions[-2]} and {mentions[-1]}"]
    return " ".join(f"{m}." for m in mentions)


def varied_caption(objects: Iterable[DemoObject], n_images: int, rng: Random) -> str:
    """One of many valid captions of ``objects``, drawn from ``rng``.

    Varies what a captioner chooses: sentence template (object first or ``there is ...``),
    preposition (at / in), ``corner`` or not, size synonyms (big / large, little / small), joining the
    last two objects with ``and``, an optional count sentence before single-image captions, and the
    object order by ``REVERSED_ORDER_SHARE`` (0 today: reading order). Multi-image captions keep the
    synonym, preposition and ``and`` choices but use compact object-first sentences: six objects must
    fit the teacher-written caption budget of 64 tokens. Every object is
    named with all four attributes, so ``parse_caption`` recovers exactly ``objects``.
    """
    objects = list(objects)
    if n_images == 1:
        body = _varied_sentences(objects, rng)
        if rng.random() < 0.5:
            body = f"{_count_sentence(len(objects), rng)} {body}"
        return body
    parts = [
        f"image {image + 1}: " + _varied_sentences([o for o in objects if o.image == image], rng, True)
        for image in range(n_images)
    ]
    return " ".join(parts)


def caption_for(objects: Iterable[DemoObject], n_images: int, style: CaptionStyle, rng: Random) -> str:
    """The reference caption of one row in ``style`` (``rng`` is only drawn from when varied)."""
    if style == "exact":
        return format_caption(objects, n_images)
    if style == "varied":
        return varied_caption(objects, n_images, rng)
    raise ValueError(f"unknown caption style {style!r}; expected one of {CAPTION_STYLES}")


def _alternation(words: Iterable[str]) -> str:
    return "|".join(sorted(words, key=len, reverse=True))


_SIZE = _alternation(w for ws in SIZE_WORDS.values() for w in ws)
_SIZE_CANONICAL = {w: size for size, ws in SIZE_WORDS.items() for w in ws}
_VERTICAL = _alternation(w for ws in VERTICAL_WORDS.values() for w in ws)
_VERTICAL_CANONICAL = {w: v for v, ws in VERTICAL_WORDS.items() for w in ws}
_THING = rf"(?:\ban?\s+)?\b(?P<size{{n}}>{_SIZE})\s+(?P<colour{{n}}>{_alternation(COLOURS)})\s+(?P<shape{{n}}>{_alternation(SHAPES)})\b"
_WHERE = rf"\b(?P<vertical{{n}}>{_VERTICAL})\s+(?P<side{{n}}>left|right)\b"
# Tolerant on purpose: any whitespace, optional article, "at the" / "in the", "corner", missing full
# stop. Generated captions from a half-trained model are often almost right, and partial credit is
# what F1 is for. A mention is either object first ("a big red circle in the top left") or position
# first ("in the upper left (corner) there is a big red circle"); the leftmost one wins, so a
# sentence is never read twice. Words outside the vocabulary never match, so "a tiny blue square"
# is no mention rather than a guess.
_OBJECT_RE = re.compile(
    "(?:"
    + _THING.format(n=1)
    + r"\s+(?:(?:at|in)\s+)?(?:the\s+)?"
    + _WHERE.format(n=1)
    + ")|(?:"
    + r"\b(?:at|in)\s+(?:the\s+)?"
    + _WHERE.format(n=2)
    + r"(?:\s+corner)?\s*,?\s+(?:there\s+is\s+|is\s+)?"
    + _THING.format(n=2)
    + ")"
)
_IMAGE_RE = re.compile(r"\bimage\s+(\d+)\s*:")


def parse_caption(text: str) -> list[DemoObject]:
    """Every well-formed object mention in ``text``, in order of appearance.

    Reads both caption styles; synonyms map to the canonical words (``big`` -> ``large``, ``upper``
    -> ``top``). Junk between mentions is skipped; a mention with a word outside the vocabulary is
    dropped rather than guessed. ``image N:`` markers set the ``image`` field of the mentions that
    follow them (``N - 1``); text before the first marker belongs to image 0.
    """
    lowered = text.lower()
    markers = [(m.start(), int(m.group(1)) - 1) for m in _IMAGE_RE.finditer(lowered)]
    found = []
    for m in _OBJECT_RE.finditer(lowered):
        n = "1" if m.group("size1") is not None else "2"
        size = _SIZE_CANONICAL[m.group(f"size{n}")]
        colour, shape = m.group(f"colour{n}"), m.group(f"shape{n}")
        position = f"{_VERTICAL_CANONICAL[m.group(f'vertical{n}')]} {m.group(f'side{n}')}"
        image = 0
        for start, index in markers:
            if start < m.start():
                image = max(index, 0)
        found.append(DemoObject(shape, colour, size, position, image))
    return found


# Words that name what the image decides: shape, colour, cell (in every synonym) and the count.
# Size words are their own class: in the varied style each size has two words (big / large), so the
# teacher's uncertainty there is wording even though the size itself is decided by the image.
# Everything else in a caption is wording (articles, prepositions, templates, punctuation).
OBJECT_WORDS: frozenset[str] = frozenset(
    (
        *SHAPES,
        *COLOURS,
        "left",
        "right",
        *NUMBER_WORDS,
        *(w for ws in VERTICAL_WORDS.values() for w in ws),
    )
)
SIZE_WORD_SET: frozenset[str] = frozenset(w for ws in SIZE_WORDS.values() for w in ws)


def token_class(text: str) -> str:
    """Class of one decoded caption token: ``object`` (shape, colour, cell or count word), ``size``,
    ``end`` (a special token such as ``<|im_end|>``) or ``phrasing`` (every other word or mark)."""
    stripped = text.strip()
    if stripped.startswith("<|") and stripped.endswith("|>"):
        return "end"
    word = stripped.lower()
    if word in SIZE_WORD_SET:
        return "size"
    return "object" if word in OBJECT_WORDS else "phrasing"


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
