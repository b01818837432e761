"""The evaluate stage: score a trained student on a split without any teacher forward.

Three measurements, each on the rows that encode (a row that does not is counted as skipped, with
its reason, never replaced):

- CE (nats per supervised token) and token accuracy over the tokenizer's real ids, scored by the
  student step's own function (slicing alignment, fp32 head on supervised positions only).
- KL to the cached teacher when ``<custom.teacher_cache>/val`` exists and the split is ``val``: the
  per-token GJSD (``rlhf.beta``, forward KL without an rlhf block) over the cached top-k + tail, at
  ``custom.loss_temperature``. Every row's encoding hash must equal the cache's.
- Caption scores: greedy captions for every row with images and a reference response, scored with
  BLEU-4, ROUGE-L and CIDEr (``pipeline.evaluate.captions``), plus the dataset's own metric when
  ``custom.caption_metric`` names one (the demo's object F1 and hallucination rate).

``shuffle_images=True`` gives every row another row's images (a seeded derangement among rows with the
same image count): the CE gap to the true-image run shows whether the model looks at the image.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.cache.policy import CachePolicy
from pipeline.data import BadRow, Row, check_row, read_rows
from pipeline.encoding import EncodedRow, RowEncoder
from pipeline.errors import DataError
from pipeline.evaluate.captions import caption_metrics, caption_rows, load_caption_metric
from pipeline.models import load_trained
from pipeline.splits import open_split_cache, split_path

if TYPE_CHECKING:
    from pipeline.config import DistillConfig

BATCH_SIZE = 8  # rows per CE forward
# Rows per generate call: on CPU each decoding step costs about the same for 1 or 32 rows.
GENERATE_BATCH_SIZE = 32
# Room past the longest reference caption, so a model that is right but wordier is never cut short.
GENERATION_MARGIN = 16


# ----------------------------------------------------------------------------------- model, rows


def derange_images(rows: Sequence[Row], seed: int) -> tuple[list[Row], int]:
    """Give each row another row's images: ``(new rows, rows left with their own images)``.

    Sattolo's algorithm draws a single cycle, hence no fixed point, within each group of rows with the
    same image count (the prompt's ``<image>`` tags must still match). A group of one row cannot be
    deranged and keeps its images; text-only rows are unchanged and not counted.
    """
    rng = random.Random(seed)
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        if row.images:
            groups.setdefault(len(row.images), []).append(i)
    out = list(rows)
    kept = 0
    for _, idx in sorted(groups.items()):
        if len(idx) < 2:
            kept += len(idx)
            continue
        perm = list(range(len(idx)))
        for i in range(len(perm) - 1, 0, -1):
            j = rng.randrange(i)  # j < i (never i itself): this is what makes the cycle single
            perm[i], perm[j] = perm[j], perm[i]
        for dst, src in zip(idx, perm, strict=True):
            out[dst] = replace(rows[dst], images=list(rows[idx[src]].images))
    return out, kept


def encode_rows(
    encoder: RowEncoder, rows: Sequence[Row | BadRow]
) -> tuple[list[tuple[Row, EncodedRow]], Counter[str]]:
    """Encode strictly: ``([(row, encoded)], skip reasons -> count)``; unusable rows are counted."""
    good: list[tuple[Row, EncodedRow]] = []
    skipped: Counter[str] = Counter()
    for row in rows:
        if isinstance(row, BadRow):
            skipped[row.reason] += 1
            continue
        try:
            good.append((row, encoder.encode(row)))
        except DataError as exc:
            skipped[exc.reason] += 1
    return good, skipped


# ---------------------------------------------------------------------------------- token scores


@torch.no_grad()
def score_tokens(
    model: Any,
    encoder: RowEncoder,
    encoded: Sequence[tuple[Row, EncodedRow]],
    *,
    batch_size: int = BATCH_SIZE,
    cache: Any = None,
    beta: float = 0.0,
    loss_temperature: float = 1.0,
) -> dict[str, float]:
    """Summed CE, correct-token count and (with ``cache``) GJSD over every supervised target.

    The student step's own scoring (``pipeline.train.student_forward.student_token_scores``) over the
    training dataset and collator (``pipeline.train.data``): the head runs in fp32 on supervised
    positions only, in row chunks, so full-vocabulary logits never exist for the whole ``[B, L, V]``
    batch, and evaluation measures exactly what training optimises.

    ``cache`` is duck-typed (``sample_ids``, ``get(id)`` -> a ``CachedSample``); rows it lacks get
    placeholder targets and are left out of the KL only. A row whose encoding differs from its cache
    row raises ``CacheMismatchError``.
    """
    from tqdm import tqdm

    from pipeline.cache.targets import teacher_topk
    from pipeline.forward import supervised_index
    from pipeline.train.data import IDS_KEY, TEACHER_KEY, DistillCollator, EncodedDataset
    from pipeline.train.student_forward import student_token_scores

    device = next(model.parameters()).device
    real_vocab = len(encoder.tokenizer)
    rows = [row for row, _ in encoded]
    dataset = EncodedDataset(rows, encoder, cache, partial_cache=True, encoded=[enc for _, enc in encoded])
    collate = DistillCollator(encoder.template.data_collator, placeholders=True)
    cached_ids = dataset.cached_ids or set()
    sums = dict.fromkeys(("ce_sum", "correct", "tokens", "kl_sum", "kl_tokens", "kl_rows"), 0.0)
    for start in tqdm(range(0, len(dataset), batch_size), desc="scoring", unit="batch", leave=False):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        teacher, ids = batch.pop(TEACHER_KEY, None), batch.pop(IDS_KEY)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        topk = None
        if teacher is not None:
            b, j = supervised_index(batch["labels"])
            topk = teacher_topk(teacher, batch["labels"][b, j], real_vocab)
        scores = student_token_scores(
            model, batch, real_vocab=real_vocab, topk=topk, beta=beta, loss_temperature=loss_temperature
        )
        t = scores.tokens
        sums["ce_sum"] += float(t.ce.sum())
        sums["correct"] += float(t.correct.sum())
        sums["tokens"] += scores.targets.numel()
        if t.kl is not None and teacher is not None:
            in_cache = teacher["cached"].to(device)
            sums["kl_sum"] += float(t.kl[in_cache].sum())
            sums["kl_tokens"] += int(in_cache.sum())
            sums["kl_rows"] += sum(1 for sid in ids if sid in cached_ids)
    return sums


# -------------------------------------------------------------------------------------- captions


@torch.no_grad()
def generate_captions(
    model: Any,
    encoder: RowEncoder,
    rows: Sequence[Row],
    max_new_tokens: int,
    batch_size: int = GENERATE_BATCH_SIZE,
) -> list[str]:
    """Greedy completions of each row's prompt, batched (decoded text per row, in order).

    Runs the shared generation loop (``pipeline.generation``): left padding, stop at the template's
    end-of-turn, each completion cut at its first stop token.
    """
    from tqdm import tqdm

    from pipeline.generation import SamplingSettings, generate

    settings = SamplingSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    texts: list[str] = []
    with tqdm(total=len(rows), desc="captions", unit="row", leave=False) as bar:
        for start in range(0, len(rows), batch_size):  # the same batches as one call: same captions
            texts += [c.text for c in generate(model, encoder, rows[start : start + batch_size], settings)]
            bar.update(min(batch_size, len(rows) - start))
    return texts


# -------------------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class EvalOptions:
    """What an evaluation run measures, beyond the config."""

    max_rows: int | None = None  # the split's first rows only
    generate: bool = True  # generate and score captions
    # every row gets another row's images (the CE gap to the true images shows the model looks)
    shuffle_images: bool = False
    max_new_tokens: int | None = None  # None: the longest reference caption + GENERATION_MARGIN
    batch_size: int = BATCH_SIZE  # rows per CE forward


def recipe(cfg: DistillConfig) -> dict[str, Any]:
    """The training knobs a comparison names a run by: trainer, rate, steps and, for GKD, its loss."""
    out: dict[str, Any] = {
        "trainer": cfg.custom.trainer_variant,
        "learning_rate": cfg.train.learning_rate,
        "max_steps": cfg.train.max_steps,
    }
    if cfg.rlhf is not None:
        out.update(beta=cfg.rlhf.beta, sft_alpha=cfg.rlhf.sft_alpha, lmbda=cfg.rlhf.lmbda)
    return out


def run_evaluation(
    cfg: DistillConfig,
    checkpoint: str | Path | None,
    split: str | Path,
    out: str | Path,
    options: EvalOptions = EvalOptions(),
    *,
    model: Any = None,
    encoder: RowEncoder | None = None,
) -> dict[str, Any]:
    """Evaluate a student on ``split`` and write the metrics JSON to ``out`` (returned as a dict).

    Keys: ``ce`` (nats/token), ``token_accuracy``, ``tokens``, ``rows_in`` = ``rows_scored`` +
    ``rows_skipped`` (``skip_reasons``); ``kl``, ``kl_rows``, ``kl_tokens`` with a ``val`` cache (not
    with shuffled images, whose encodings are not the cached ones); with ``generate``: ``bleu4``,
    ``rouge_l``, ``cider``, ``caption_rows``, ``caption_examples``, ``max_new_tokens``, plus the keys
    of ``custom.caption_metric`` (the demo's: ``caption_precision/recall/f1``, ``hallucination_rate``,
    ``baseline_f1``). Timings: ``load_s``, ``score_s``, ``generate_s``, ``wall_s``.

    ``ce`` / ``token_accuracy`` / ``kl`` are None when no token was scored. With ``shuffle_images``,
    captions generated from the wrong images are still scored against each row's own reference.
    ``model`` / ``encoder`` (both or neither) reuse an already loaded model.
    """
    t0 = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    if model is None or encoder is None:
        model, encoder, path = load_trained(cfg, checkpoint)
        ckpt = str(path)
    else:
        ckpt = str(checkpoint) if checkpoint is not None else "<in memory>"
    t_load = time.perf_counter()
    metrics: dict[str, Any] = {"checkpoint": ckpt, "split": str(split), "recipe": recipe(cfg)}
    rows = _split_rows(cfg, split, options, metrics)
    encoded, skipped = encode_rows(encoder, rows)
    metrics.update(_token_metrics(cfg, split, model, encoder, encoded, options))
    metrics.update(rows_skipped=sum(skipped.values()), skip_reasons=dict(skipped))
    t_score = time.perf_counter()
    if options.generate:
        metrics.update(_caption_metrics(cfg, model, encoder, [row for row, _ in encoded], options))
    t_end = time.perf_counter()
    metrics.update(
        load_s=t_load - t0, score_s=t_score - t_load, generate_s=t_end - t_score, wall_s=t_end - t0
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return metrics


def _split_rows(
    cfg: DistillConfig, split: str | Path, options: EvalOptions, metrics: dict[str, Any]
) -> list[Row | BadRow]:
    """The split's rows (images deranged with ``shuffle_images``); records what was read in ``metrics``."""
    rows = read_rows(split_path(cfg, split))[: options.max_rows]
    metrics.update(shuffle_images=options.shuffle_images, seed=cfg.train.seed, rows_in=len(rows))
    if options.shuffle_images:
        usable = [r for r in rows if isinstance(r, Row) and check_row(r) is None]
        deranged, metrics["rows_unshuffled"] = derange_images(usable, cfg.train.seed)
        by_id = {r.sample_id: r for r in deranged}
        rows = [by_id.get(r.sample_id, r) for r in rows]
    return rows


def _token_metrics(
    cfg: DistillConfig,
    split: str | Path,
    model: Any,
    encoder: RowEncoder,
    encoded: Sequence[tuple[Row, EncodedRow]],
    options: EvalOptions,
) -> dict[str, Any]:
    """CE, token accuracy and (against the ``val`` cache, true images only) KL of the encoded rows."""
    cache = None if options.shuffle_images else open_eval_cache(cfg, split)
    beta = cfg.rlhf.beta if cfg.rlhf is not None else 0.0
    sums = score_tokens(
        model,
        encoder,
        encoded,
        batch_size=options.batch_size,
        cache=cache,
        beta=beta,
        loss_temperature=cfg.custom.loss_temperature,
    )
    # None, not 0, when nothing was scored: a 0 CE or KL would read as a perfect model.
    n = sums["tokens"] or None
    metrics: dict[str, Any] = dict(
        rows_scored=len(encoded),
        tokens=int(sums["tokens"]),
        ce=sums["ce_sum"] / n if n else None,
        token_accuracy=sums["correct"] / n if n else None,
    )
    if cache is not None:
        metrics.update(
            kl=sums["kl_sum"] / sums["kl_tokens"] if sums["kl_tokens"] else None,
            kl_rows=int(sums["kl_rows"]),
            kl_tokens=int(sums["kl_tokens"]),
            kl_beta=beta,
        )
    return metrics


def _caption_metrics(
    cfg: DistillConfig, model: Any, encoder: RowEncoder, rows: Sequence[Row], options: EvalOptions
) -> dict[str, Any]:
    """Greedy captions of the rows with images and a reference, scored (BLEU-4, ROUGE-L, CIDEr, plus
    ``custom.caption_metric``)."""
    cap_rows = caption_rows(list(rows))
    max_new_tokens = options.max_new_tokens
    if max_new_tokens is None:
        longest = max((len(encoder.tokenizer.encode(r.response())) for r in cap_rows), default=0)
        max_new_tokens = longest + GENERATION_MARGIN
    texts = generate_captions(model, encoder, cap_rows, max_new_tokens) if cap_rows else []
    extra = load_caption_metric(cfg.custom.caption_metric) if cfg.custom.caption_metric else None
    train_file = cfg.data.dataset[0] if cfg.data.dataset else None
    return {"max_new_tokens": max_new_tokens, **caption_metrics(cap_rows, texts, extra, train_file)}


def compare_true_vs_shuffled(
    cfg: DistillConfig,
    checkpoint: str | Path | None,
    split: str | Path,
    *,
    max_rows: int | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """CE with true vs deranged images on the same rows, one model load; ``ce_gap`` > 0 means the model
    uses the image. Writes ``out`` (JSON) when given."""
    import tempfile

    model, encoder, path = load_trained(cfg, checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            name: run_evaluation(
                cfg,
                path,
                split,
                Path(tmp) / f"{name}.json",
                EvalOptions(max_rows=max_rows, generate=False, shuffle_images=name == "shuffled"),
                model=model,
                encoder=encoder,
            )
            for name in ("true", "shuffled")
        }
    result = {
        "checkpoint": str(path),
        "split": str(split),
        "ce_true": runs["true"]["ce"],
        "ce_shuffled": runs["shuffled"]["ce"],
        "ce_gap": runs["shuffled"]["ce"] - runs["true"]["ce"],
        "token_accuracy_true": runs["true"]["token_accuracy"],
        "token_accuracy_shuffled": runs["shuffled"]["token_accuracy"],
        "rows_scored_true": runs["true"]["rows_scored"],
        "rows_scored_shuffled": runs["shuffled"]["rows_scored"],
        "rows_unshuffled": runs["shuffled"]["rows_unshuffled"],
    }
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return result


def open_eval_cache(cfg: DistillConfig, split: str | Path) -> Any:
    """The ``val`` teacher cache under the encoding policy (evaluation never loads the teacher), or
    None when there is none or the split is not ``val``."""
    if str(split) != "val" or not cfg.custom.teacher_cache:
        return None
    return open_split_cache(cfg, "val", CachePolicy.ENCODING, required=False)
