"""Caption formatting, parsing and object-level F1 of the demo captioning language."""

from __future__ import annotations

import itertools
import random

import pytest

from pipeline.demo.captions import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    DemoObject,
    corpus_object_f1,
    format_caption,
    hallucination_rate,
    object_f1,
    objects_from_records,
    parse_caption,
)

RED_CIRCLE = DemoObject("circle", "red", "large", "top left")
BLUE_SQUARE = DemoObject("square", "blue", "small", "bottom right")


def test_format_caption_is_canonical_order() -> None:
    text = format_caption([BLUE_SQUARE, RED_CIRCLE])
    assert text == "a large red circle at the top left. a small blue square at the bottom right."


def test_every_single_object_round_trips() -> None:
    for shape, colour, size, position in itertools.product(SHAPES, COLOURS, SIZES, POSITIONS):
        obj = DemoObject(shape, colour, size, position)
        assert parse_caption(format_caption([obj])) == [obj]


def test_random_multi_image_captions_round_trip() -> None:
    rng = random.Random(0)
    for _ in range(200):
        n_images = rng.choice([1, 2, 3])
        objects = [
            DemoObject(rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES), position, image)
            for image in range(n_images)
            for position in sorted(rng.sample(POSITIONS, rng.randint(1, 4)), key=POSITIONS.index)
        ]
        assert parse_caption(format_caption(objects, n_images)) == objects


def test_parse_tolerates_junk_and_drops_unknown_words() -> None:
    text = "Sure!! A LARGE red circle at  the top\nleft, then a tiny blue square at the top right. a small blue square bottom right"
    assert parse_caption(text) == [RED_CIRCLE, BLUE_SQUARE]
    assert parse_caption("") == []
    assert parse_caption("a large red circle at the") == []


def test_parse_image_markers() -> None:
    text = "image 1: a large red circle at the top left. image 2: a small blue square at the bottom right."
    assert parse_caption(text) == [RED_CIRCLE, BLUE_SQUARE._replace(image=1)]


def test_f1_perfect_and_disjoint() -> None:
    assert object_f1([RED_CIRCLE], [RED_CIRCLE]) == (1.0, 1.0, 1.0)
    assert object_f1([BLUE_SQUARE], [RED_CIRCLE]) == (0.0, 0.0, 0.0)


def test_f1_requires_every_attribute() -> None:
    variants = [
        RED_CIRCLE._replace(shape="square"),
        RED_CIRCLE._replace(colour="blue"),
        RED_CIRCLE._replace(size="small"),
        RED_CIRCLE._replace(position="top right"),
        RED_CIRCLE._replace(image=1),
    ]
    for changed in variants:
        assert object_f1([changed], [RED_CIRCLE])[2] == 0.0


def test_f1_empty_sides() -> None:
    assert object_f1([], []) == (1.0, 1.0, 1.0)
    assert object_f1([], [RED_CIRCLE]) == (1.0, 0.0, 0.0)
    assert object_f1([RED_CIRCLE], []) == (0.0, 1.0, 0.0)


def test_f1_multiset_duplicates_match_once() -> None:
    precision, recall, f1 = object_f1([RED_CIRCLE, RED_CIRCLE], [RED_CIRCLE])
    assert (precision, recall) == (0.5, 1.0)
    assert f1 == pytest.approx(2 / 3)
    assert hallucination_rate([RED_CIRCLE, RED_CIRCLE], [RED_CIRCLE]) == 0.5


def test_corpus_f1_is_micro_averaged() -> None:
    scores = corpus_object_f1([([RED_CIRCLE], [RED_CIRCLE]), ([], [BLUE_SQUARE, RED_CIRCLE, RED_CIRCLE])])
    assert scores["precision"] == 1.0
    assert scores["recall"] == pytest.approx(1 / 4)
    assert scores["f1"] == pytest.approx(0.4)
    assert scores["hallucination_rate"] == 0.0
    assert corpus_object_f1([])["f1"] == 1.0


def test_hallucination_rate_without_predictions_is_zero() -> None:
    assert hallucination_rate([], [RED_CIRCLE]) == 0.0
    assert hallucination_rate([BLUE_SQUARE], [RED_CIRCLE]) == 1.0


def test_objects_from_records() -> None:
    record = {"image": 1, "shape": "square", "colour": "blue", "size": "small", "position": "bottom right"}
    assert objects_from_records([record]) == [BLUE_SQUARE._replace(image=1)]
