"""What one rank will do with one split of the cache stage, decided before the teacher loads
(:func:`pipeline.teacher.incremental.plan_split` makes it, then keys it against the cache)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.data import BadRow, Row


@dataclass
class SplitPlan:
    """What one rank will do with one split, decided before the teacher loads.

    ``files``: the split's JSONL files (``path``: them joined, for messages); ``rows_in``: this
    rank's share of their rows (after ``limit``); ``usable``: rows that passed the fast checks
    (parsed, images readable, response present); ``unusable``: the others, each with its reason, to
    be recorded as skipped; ``digests``: row digests computed on the way (by sample_id).
    """

    split: str
    path: str
    rows_in: int
    usable: list[Row]
    unusable: list[BadRow]
    files: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    all_ids: frozenset[str] = frozenset()  # every rank's sample_ids (after ``limit``)
