"""Teacher-written responses in the cache (offline sequence-level KD).

Real caption datasets are mostly uncaptioned images. With ``custom.written_responses`` the cache
stage lets the teacher write the response of rows that have only a prompt (``prompt_only``), or of
every row (``all``), and caches the teacher's top-k along exactly the tokens the student will train
on. Per batch of rows:

1. the shared generation loop writes a response per row (greedy, or sampled at
   ``written_temperature`` with ``written_seed``; at most ``written_max_new_tokens`` tokens; stop at
   the template's end-of-turn);
2. the decoded text becomes the row's assistant turn and the row is encoded again by the one
   ``RowEncoder`` (so the cached encoding hash is the one training recomputes);
3. the teacher forward that every cache row gets runs on those re-encoded ids.

With ``custom.written_by`` a student checkpoint (an on-policy round, :mod:`pipeline.teacher.rounds`),
the student writes step 1 before the teacher loads and the teacher only scores (``completions``); the
cache rows are flagged ``teacher_written`` all the same (the flag means "written in the cache stage").

Decoding and re-encoding can change ids (a tokenizer may merge differently than the model
generated): such rows are counted (``retokenized``); the cache always holds the re-encoded ids.
A response that hits ``written_max_new_tokens`` without its end-of-turn is skipped
(``written_unfinished``) or kept, per ``written_unfinished``. With ``off``, a row without a response
is skipped as ``prompt_only_in_labelled_split``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.cache.format import (
    SKIP_WRITTEN_UNFINISHED,
    TAG_RETOKENIZED,
    TAG_UNFINISHED_KEPT,
    TAG_WRITTEN,
)
from pipeline.data import PROMPT_ONLY, Row
from pipeline.errors import DataError
from pipeline.generation import SamplingSettings, generate, stop_token_ids, with_response

if TYPE_CHECKING:
    from pipeline.cache.format import CachedSample
    from pipeline.config import DistillConfig
    from pipeline.encoding import EncodedRow, RowEncoder
    from pipeline.generation import Completion

UNFINISHED = SKIP_WRITTEN_UNFINISHED
EMPTY_WRITTEN = "written_empty"  # every code is listed in pipeline.data.SKIP_REASONS


def is_prompt_only(row: Row) -> bool:
    """True when the row ends without an assistant turn (an unlabelled prompt)."""
    return not row.messages or row.messages[-1].get("role") != "assistant"


def wants_written(row: Row, mode: str) -> bool:
    """Whether the teacher writes this row's response under ``custom.written_responses`` = ``mode``."""
    return mode == "all" or (mode == "prompt_only" and is_prompt_only(row))


def sampling_settings(cfg: DistillConfig, batch_size: int) -> SamplingSettings:
    """The writer's sampling: ``written_*``; a student round's label (``written_round``) is mixed into
    the seed, so a new round of the same checkpoint draws fresh samples."""
    c = cfg.custom
    seed = c.written_seed
    if c.written_by != "teacher" and c.written_round:
        digest = hashlib.sha256(f"{seed}:round:{c.written_round}".encode()).digest()
        seed = int.from_bytes(digest[:4], "little")
    return SamplingSettings(
        max_new_tokens=c.written_max_new_tokens,
        temperature=c.written_temperature,
        seed=seed,
        batch_size=batch_size,
    )


@dataclass
class WrittenRow:
    """A row whose response the teacher wrote: the row as re-encoded, and what was generated.

    ``generated_ids``: int [m] before the stop token; ``retokenized``: the re-encoded response's ids
    are not ``generated_ids`` followed by the end-of-turn.
    """

    row: Row
    encoded: EncodedRow
    text: str
    generated_ids: list[int]
    stopped: bool
    retokenized: bool


def _retokenized(enc: EncodedRow, generated: list[int], stop_ids: list[int]) -> bool:
    """Supervised target ids [n] are the generated ids then a stop id (the template's end-of-turn)?"""
    targets = np.asarray(enc.labels, dtype=np.int64)[enc.target_positions()].tolist()
    m = len(generated)
    return not (len(targets) > m and targets[:m] == generated and targets[m] in stop_ids)


def _chunk_seed(seed: int, rows: Sequence[Row]) -> int:
    """A chunk's sampling seed from the configured seed and its first sample id: a resumed or
    data-parallel run samples the same chunk the same way."""
    digest = hashlib.sha256(f"{seed}:{rows[0].sample_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def generate_chunk(
    writer: Any, encoder: RowEncoder, rows: Sequence[Row], settings: SamplingSettings
) -> list[Completion]:
    """``writer``'s completions of one chunk of rows, seeded by the chunk (:func:`_chunk_seed`)."""
    if settings.temperature > 0 and rows and settings.seed is not None:
        settings = replace(settings, seed=_chunk_seed(settings.seed, rows))
    return generate(writer, encoder, rows, settings)


def chunks(rows: Sequence[Row], size: int) -> list[Sequence[Row]]:
    """``rows`` in the chunks the cache stage writes them in (``custom.cache_batch_size``)."""
    return [rows[start : start + size] for start in range(0, len(rows), size)]


def write_responses(
    writer: Any,
    encoder: RowEncoder,
    rows: Sequence[Row],
    settings: SamplingSettings,
    keep_unfinished: bool,
    completions: Sequence[Completion] | None = None,
    who: str = "teacher",
) -> tuple[list[WrittenRow], list[tuple[str, str, str]]]:
    """Generate (or take ``completions``, one per row, written earlier by a student), decode and
    re-encode ``rows``: ``(written rows, skipped as (sample_id, reason, detail))``."""
    if completions is None:
        completions = generate_chunk(writer, encoder, rows, settings)
    stop_ids = stop_token_ids(encoder)
    written: list[WrittenRow] = []
    skipped: list[tuple[str, str, str]] = []
    for row, c in zip(rows, completions, strict=True):
        where = f"{row.source}: sample {row.sample_id!r}"
        if not c.stopped and not keep_unfinished:
            detail = f"{where}: {who} response hit max_new_tokens {settings.max_new_tokens} without stopping"
            skipped.append((row.sample_id, UNFINISHED, detail))
            continue
        if not c.text:
            skipped.append((row.sample_id, EMPTY_WRITTEN, f"{where}: {who} wrote an empty response"))
            continue
        new_row = with_response(row, c.text)
        try:
            enc = encoder.encode(new_row)
        except DataError as exc:
            skipped.append((row.sample_id, exc.reason, str(exc)))
            continue
        retok = _retokenized(enc, c.token_ids, stop_ids)
        written.append(WrittenRow(new_row, enc, c.text, c.token_ids, c.stopped, retok))
    return written, skipped


def written_tags(w: WrittenRow) -> tuple[str, ...]:
    """The row tags recorded with ``w``'s cache row (``TAG_*`` in ``pipeline.cache.format``): summed
    over every shard and rank into the manifest's ``counts.tags``, they survive resumes and the merge."""
    return (
        (TAG_WRITTEN,)
        + ((TAG_RETOKENIZED,) if w.retokenized else ())
        + ((TAG_UNFINISHED_KEPT,) if not w.stopped else ())
    )


def mark_written(sample: CachedSample, w: WrittenRow) -> CachedSample:
    """The cache row of a teacher-written response: flagged, with its text and generated ids."""
    return replace(
        sample,
        teacher_written=True,
        written_text=w.text,
        written_ids=np.asarray(w.generated_ids, np.int64),
    )


def cache_written_rows(
    cfg: DistillConfig,
    teacher: Any,
    encoder: RowEncoder,
    rows: Sequence[Row],
    add: Callable[[CachedSample, tuple[str, ...]], None],
    skip: Callable[[str, str, str], None],
    forward: Callable[[dict[str, Any], list[tuple[str, str, int]]], list[CachedSample]],
    *,
    strict: bool = False,
    progress: Callable[[int], None] | None = None,
    completions: dict[str, Completion] | None = None,
) -> dict[str, int]:
    """Write, re-encode and cache ``rows`` in chunks of ``custom.cache_batch_size``.

    ``forward(collated batch, [(sample_id, encoding_hash, n_tokens)])`` is the cache stage's teacher
    forward returning one ``CachedSample`` per row; ``add(sample, tags)`` / ``skip`` are the writer's
    (tags: :func:`written_tags`, summed into the manifest's ``counts.tags``); ``strict`` makes
    a skip an error. ``completions`` (by sample_id): responses a student wrote before the teacher
    loaded (:mod:`pipeline.teacher.rounds`); the teacher then only scores. Returns counts:
    ``written``, ``retokenized``, ``unfinished_kept``, and per skip reason, for this call only (a
    resumed run's earlier rows are in the manifest's ``counts.tags`` and ``skipped_by_reason``).
    """
    bs = cfg.custom.cache_batch_size
    settings = sampling_settings(cfg, bs)
    keep = cfg.custom.written_unfinished == "keep"
    who = "teacher" if completions is None else "student"
    counts: dict[str, int] = {"written": 0, "retokenized": 0, "unfinished_kept": 0}
    for chunk in chunks(rows, bs):
        done = None if completions is None else [completions[r.sample_id] for r in chunk]
        written, skipped = write_responses(teacher, encoder, chunk, settings, keep, done, who)
        for sid, reason, detail in skipped:
            if strict:
                raise DataError(detail)
            skip(sid, reason, detail)
            counts[reason] = counts.get(reason, 0) + 1
        if written:
            batch = encoder.template.data_collator([w.encoded.inputs for w in written])
            ids = [(w.row.sample_id, w.encoded.encoding_hash, len(w.encoded.input_ids)) for w in written]
            for sample, w in zip(forward(batch, ids), written, strict=True):
                add(mark_written(sample, w), written_tags(w))
            counts["written"] += len(written)
            counts["retokenized"] += sum(w.retokenized for w in written)
            counts["unfinished_kept"] += sum(not w.stopped for w in written)
        if progress is not None:
            progress(len(chunk))
    return counts


def partition_for_written(
    rows: Sequence[Any], mode: str, strict: bool = False
) -> tuple[list[Row], list[Any]]:
    """``partition_rows`` for a split cached with ``custom.written_responses`` = ``mode``.

    Off: a prompt-only row is unusable as ``prompt_only_in_labelled_split`` (its own reason, so a
    labelled split that lost its captions is visible in the report). Otherwise rows need no response
    (the teacher writes it), but images are still checked.
    """
    from pipeline.data import BadRow, partition_rows

    if mode != "off":
        return partition_rows(rows, need_response=False, strict=strict)
    prompt_only = [r for r in rows if isinstance(r, Row) and is_prompt_only(r)]
    for r in prompt_only[:1] if strict else []:
        raise DataError(f"{r.source}: sample {r.sample_id!r}: {PROMPT_ONLY}: row has no assistant response")
    usable, bad = partition_rows(
        [r for r in rows if not (isinstance(r, Row) and is_prompt_only(r))], strict=strict
    )
    bad += [
        BadRow(r.sample_id, PROMPT_ONLY, "no assistant response (custom.written_responses is off)", r.source)
        for r in prompt_only
    ]
    return usable, bad


def split_written(rows: Sequence[Row], mode: str) -> tuple[list[Row], list[Row]]:
    """``(rows cached as they are, rows whose response the teacher writes)``, order kept within each."""
    return [r for r in rows if not wants_written(r, mode)], [r for r in rows if wants_written(r, mode)]


def export_written(cache_root: str | Path, split_file: str | Path, out: str | Path) -> dict[str, int]:
    """Write the rows a cache holds, in cache order, teacher-written responses filled in, as JSONL.

    The text-only view of a teacher-written cache: SFT on it is sequence-level KD alone, and a live
    teacher run on it sees exactly the cached tokens. Only live rows are written (one per sample_id:
    a superseded version is not), and ``out`` is replaced only once complete (a full disk is one
    ``DiskFullError`` line and leaves the old file). Returns ``{"rows": n, "teacher_written": m}``.
    """
    from pipeline.cache.export import live_samples
    from pipeline.cache.reader import CacheReader
    from pipeline.data import read_rows, write_rows
    from pipeline.files import atomic_path

    reader = CacheReader(Path(cache_root))
    by_id = {r.sample_id: r for r in read_rows(split_file) if isinstance(r, Row)}
    rows, n_written = [], 0
    for sample in live_samples(reader):
        row = by_id.get(sample.sample_id)
        if row is None:
            raise DataError(
                f"{split_file}: sample {sample.sample_id!r} is in cache {cache_root} but not here"
            )
        if sample.teacher_written:
            row, n_written = with_response(row, sample.written_text), n_written + 1
        rows.append(row)
    with atomic_path(out) as tmp:  # beside ``out``: image paths are made relative to the same folder
        write_rows(rows, tmp)
    return {"rows": len(rows), "teacher_written": n_written}
