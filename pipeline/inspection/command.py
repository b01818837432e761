"""``distill inspect CACHE``: summary, one sample's tokens, the HTML report, figures, export, audit.

:func:`run_inspect` takes explicit arguments (the CLI unpacks its namespace) and returns the exit code:
0, or 1 when ``audit`` found a problem. Errors are ``DistillError`` subclasses.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pipeline.cache.policy import open_cache_dir
from pipeline.errors import ConfigError
from pipeline.inspection.report import DEFAULT_LIMIT, write_report
from pipeline.inspection.sources import resolve_rows, resolve_tokenizer
from pipeline.inspection.summary import (
    DEFAULT_RANKING,
    RANKINGS,
    format_summary,
    profile,
    sample_table,
    summarise,
)


def parse_select(select: str | None) -> tuple[str, list[str] | None]:
    """``--select``: a ranking name (rows worst first by it) or comma-separated sample ids.

    Returns (ranking, explicit ids or None).
    """
    if not select:
        return DEFAULT_RANKING, None
    if select in RANKINGS:
        return select, None
    ids = [s.strip() for s in select.split(",") if s.strip()]
    if not ids:
        raise ConfigError(f"--select {select!r}: give one of {', '.join(RANKINGS)} or sample ids")
    return DEFAULT_RANKING, ids


def export_cache(cache: Path, out: Path) -> dict[str, int]:
    """A plain copy with list columns: Parquet (``.parquet``), an Arrow stream (``.arrow``, which
    ``datasets.Dataset.from_file`` opens directly) or JSON Lines (``.jsonl``)."""
    from pipeline.cache.export import export_plain

    return export_plain(cache, out)


@dataclass
class Inspection:
    """One ``distill inspect`` of a cache split: the reader, its tokenizer and profile, opened once, and
    one method per action, each writing its lines to ``out`` (the command's stdout)."""

    cache: Path
    cfg: Any
    out: TextIO
    reader: Any = None
    tokenizer: Any = None
    note: str | None = None
    summaries: list[tuple[str, Any, Any]] = field(default_factory=list)

    def say(self, *lines: str) -> None:
        for line in lines:
            self.out.write(f"{line}\n")

    def open(self, tokenizer: Path | None, ids: list[str] | None) -> None:
        self.reader = open_cache_dir(self.cache)
        if ids:
            missing = [s for s in ids if s not in self.reader]
            if missing:
                raise ConfigError(
                    f"--select: sample(s) {missing[:5]} not in {self.cache} "
                    f"(first ids: {self.reader.sample_ids[:3]})"
                )
        self.tokenizer, self.note = resolve_tokenizer(self.reader.manifest, tokenizer, self.cfg)

    def summary(self) -> None:
        from pipeline.inspection.history import history_lines

        if self.note:
            self.say(self.note)
        prof = profile(self.reader)
        summary = summarise(self.reader, prof)
        self.summaries.append((str(self.cache), summary, prof))
        self.say(format_summary(summary))
        self.say(*history_lines(Path(self.cache), self.reader.manifest, self.reader.sample_ids, self.cfg))

    def compare(self, other_root: Path) -> None:
        other = open_cache_dir(other_root)
        other_prof = profile(other)
        self.summaries.append((str(other_root), summarise(other, other_prof), other_prof))
        self.say(f"\ncompared with {other_root}:\n{format_summary(self.summaries[-1][1])}")

    def sample(self, sample_id: str) -> None:
        self.say("", sample_table(self.reader, sample_id, self.tokenizer))

    def figures(self, out_dir: Path) -> None:
        from pipeline.inspection.figures import write_figures

        paths = write_figures([(label, p) for label, _, p in self.summaries], out_dir)
        self.say(f"\nwrote {', '.join(str(p) for p in paths)}")

    def html(self, page: Path, ranking: str, ids: list[str] | None, limit: int) -> None:
        rows = resolve_rows(self.reader.manifest, self.cfg)
        n = write_report(
            self.reader,
            page,
            self.summaries[0][2],
            tokenizer=self.tokenizer,
            rows=rows,
            ranking=ranking,
            limit=limit,
            select=ids,
            summaries=self.summaries,
            notes=([self.note] if self.note else []) + rows.notes,
        )
        self.say(*(f"note: {line}" for line in rows.notes))
        self.say(f"\nwrote {page} ({n} rows in full, index of {len(self.reader)})")

    def export(self, target: Path) -> None:
        counts = export_cache(self.cache, target)
        self.say(f"\nexported {target} ({counts['rows']} rows, {counts['targets']} targets)")

    def audit(self, dataset: Path | None) -> int:
        from pipeline.inspection.audit import audit as run_audit

        problems = run_audit(
            self.reader, tokenizer=self.tokenizer, cfg=self.cfg, dataset=str(dataset) if dataset else None
        )
        self.say("")
        if not problems:
            self.say("audit: ok")
            return 0
        self.say(f"audit: {len(problems)} problem(s)", *(f"  - {p}" for p in problems))
        return 1


def run_inspect(
    cache: Path,
    *,
    sample: str | None = None,
    audit: bool = False,
    cfg: Any = None,
    tokenizer: Path | None = None,
    html: Path | None = None,
    figures: Path | None = None,
    compare: Path | None = None,
    export: Path | None = None,
    limit: int = DEFAULT_LIMIT,
    select: str | None = None,
    dataset: Path | None = None,
    out: TextIO | None = None,
) -> int:
    """The ``inspect`` command; see ``docs/cli.md``. ``cfg`` is a loaded ``DistillConfig`` or None;
    ``out``: where the lines go (default: standard output)."""
    if export is not None:
        from pipeline.cache.export import export_format

        # A bad suffix, a missing directory or a path inside the cache stops before any work.
        export_format(export, cache)
    ranking, ids = parse_select(select)
    job = Inspection(Path(cache), cfg, out or sys.stdout)
    job.open(tokenizer, ids)
    job.summary()
    if compare is not None:
        job.compare(compare)
    if sample:
        job.sample(sample)
    if figures is not None:
        job.figures(figures)
    if html is not None:
        job.html(html, ranking, ids, limit)
    if export is not None:
        job.export(export)
    return job.audit(dataset) if audit else 0
