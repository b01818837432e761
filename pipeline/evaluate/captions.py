"""Caption metrics of generated text against each row's reference response, for any dataset.

BLEU-4, ROUGE-L and CIDEr(-D) come from ``pycocoevalcap``, the COCO caption evaluation code that
captioning papers report (https://github.com/salaniz/pycocoevalcap). Only its pure-Python scorers are
used: its PTB tokenizer, METEOR and SPICE need Java, so text is tokenised here (lower case, words and
digits; punctuation dropped), as the PTB tokenizer would for plain captions. CIDEr's document
frequencies come from the evaluated references themselves (the COCO convention), so CIDEr is
comparable between runs on the same split, not across splits.

A dataset may add its own metric through ``custom.caption_metric`` (``module:function``, called with
the rows, the generated texts and the train split's file, returning a dict of scores): the demo plugs in its object F1 and
hallucination rate this way, and the library never imports the demo.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.data import Row
from pipeline.errors import ConfigError

N_EXAMPLES = 5
_WORD = re.compile(r"[a-z0-9]+")

# (rows, generated texts, train split file or None) -> scores
CaptionMetric = Callable[[Sequence[Row], Sequence[str], "str | None"], dict[str, Any]]


def tokenize(text: str) -> str:
    """Lower-cased words and digits joined by single spaces (what the COCO scorers expect)."""
    return " ".join(_WORD.findall(text.lower()))


def reference_metrics(references: Sequence[str], generated: Sequence[str]) -> dict[str, float | None]:
    """Corpus BLEU-4, ROUGE-L (F, beta 1.2) and CIDEr-D of ``generated`` against one reference each.

    All None when there is no row; a row whose generated text is empty scores 0 on every metric.
    """
    if len(references) != len(generated):
        raise ValueError(f"{len(references)} references but {len(generated)} generated texts")
    if not references:
        return {"bleu4": None, "rouge_l": None, "cider": None}
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    # The scorers reject empty hypotheses; a placeholder word that is never in a reference scores 0.
    gts = {i: [tokenize(r) or "<empty>"] for i, r in enumerate(references)}
    res = {i: [tokenize(g) or "<empty>"] for i, g in enumerate(generated)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "rouge_l": float(rouge), "cider": float(cider)}


def load_caption_metric(spec: str) -> CaptionMetric:
    """The function named by ``custom.caption_metric`` (``module:function``)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"custom.caption_metric: {spec!r} is not of the form module:function")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"custom.caption_metric: cannot load {spec!r}: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"custom.caption_metric: {spec!r} is not callable")
    return fn  # type: ignore[no-any-return]


def caption_rows(rows: Sequence[Row]) -> list[Row]:
    """Rows whose reference response describes images: the rows captions are generated for."""
    return [r for r in rows if r.images and r.response()]


def caption_metrics(
    rows: Sequence[Row],
    generated: Sequence[str],
    extra: CaptionMetric | None = None,
    train_file: str | None = None,
) -> dict[str, Any]:
    """Reference metrics, the plug-in's scores (if any) and a few examples side by side."""
    out: dict[str, Any] = {"caption_rows": len(rows)}
    out.update(reference_metrics([r.response() for r in rows], generated))
    if extra is not None and rows:
        out.update(extra(rows, generated, train_file))
    out["caption_examples"] = [
        {"sample_id": r.sample_id, "reference": r.response(), "generated": text}
        for r, text in list(zip(rows, generated, strict=True))[:N_EXAMPLES]
    ]
    return out
