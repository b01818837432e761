"""The demo's caption metric, plugged into ``distill evaluate`` by ``custom.caption_metric``
(``pipeline.demo.caption_metric:object_metrics``): object precision / recall / F1 and hallucination
rate of generated captions against each row's ground-truth ``objects``, and the F1 of an image-blind
baseline (the train split's most frequent caption for every row).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.data import Row, read_rows
from pipeline.demo.captions import (
    DemoObject,
    corpus_object_f1,
    format_caption,
    object_f1,
    objects_from_records,
    parse_caption,
    sort_key,
)


def reference_objects(row: Row) -> list[DemoObject] | None:
    """Ground-truth objects of a caption row (``extra["objects"]``), None for other rows."""
    records = row.extra.get("objects")
    return objects_from_records(records) if records and row.images else None


def constant_baseline(train_file: str | Path | None) -> list[DemoObject] | None:
    """The most frequent ground-truth object list of the train split (first seen wins a tie).

    Scored as the prediction for every row, it is what an image-blind model that memorised the most
    common training caption would get: generated captions must beat it to show the model reads images.
    None when the train data is not a local JSONL with ``objects``.
    """
    if train_file is None:
        return None
    path = Path(train_file)
    if path.suffix != ".jsonl" or not path.is_file():
        return None
    counts: Counter[tuple[DemoObject, ...]] = Counter()
    for row in read_rows(path):
        objs = reference_objects(row) if isinstance(row, Row) else None
        if objs:
            counts[tuple(sorted(objs, key=sort_key))] += 1
    return list(counts.most_common(1)[0][0]) if counts else None


def object_metrics(rows: Sequence[Row], generated: Sequence[str], train_file: str | None) -> dict[str, Any]:
    """Micro object scores over rows with ground-truth objects (others are left out), the baseline's F1."""
    pairs = [(parse_caption(text), reference_objects(r)) for r, text in zip(rows, generated, strict=True)]
    scored = [(p, ref) for p, ref in pairs if ref is not None]
    scores = corpus_object_f1(scored)
    out: dict[str, Any] = {
        "object_rows": len(scored),
        "caption_precision": scores["precision"],
        "caption_recall": scores["recall"],
        "caption_f1": scores["f1"],
        "hallucination_rate": scores["hallucination_rate"],
        "example_f1": [object_f1(p, ref)[2] for p, ref in scored[:5]],
    }
    baseline = constant_baseline(train_file)
    if baseline is not None:
        out["baseline_f1"] = corpus_object_f1((baseline, ref) for _, ref in scored)["f1"]
        out["baseline_caption"] = format_caption(baseline)
    return out
