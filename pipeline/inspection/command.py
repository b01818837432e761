"""``distill inspect CACHE``: summary, one sample's tokens, the HTML report, figures, export, audit.

:func:`run_inspect` takes explicit arguments (the CLI unpacks its namespace) and returns the exit code:
0, or 1 when ``audit`` found a problem. Errors are ``DistillError`` subclasses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
) -> int:
    """The ``inspect`` command; see ``docs/cli.md``. ``cfg`` is a loaded ``DistillConfig`` or None."""
    from pipeline.inspection.figures import write_figures

    if export is not None:
        from pipeline.cache.export import export_format

        # A bad suffix, a missing directory or a path inside the cache stops before any work.
        export_format(export, cache)
    reader = open_cache_dir(cache)
    ranking, ids = parse_select(select)
    if ids:
        missing = [s for s in ids if s not in reader]
        if missing:
            raise ConfigError(
                f"--select: sample(s) {missing[:5]} not in {cache} (first ids: {reader.sample_ids[:3]})"
            )
    tok, note = resolve_tokenizer(reader.manifest, tokenizer, cfg)
    if note:
        print(note)
    prof = profile(reader)
    summary = summarise(reader, prof)
    print(format_summary(summary))
    from pipeline.inspection.history import history_lines

    for line in history_lines(Path(cache), reader.manifest, reader.sample_ids, cfg):
        print(line)
    summaries = [(str(cache), summary, prof)]
    if compare is not None:
        other = open_cache_dir(compare)
        other_prof = profile(other)
        summaries.append((str(compare), summarise(other, other_prof), other_prof))
        print(f"\ncompared with {compare}:\n{format_summary(summaries[1][1])}")
    if sample:
        print()
        print(sample_table(reader, sample, tok))
    if figures is not None:
        paths = write_figures([(label, p) for label, _, p in summaries], figures)
        print(f"\nwrote {', '.join(str(p) for p in paths)}")
    if html is not None:
        rows = resolve_rows(reader.manifest, cfg)
        notes = [note] if note else []
        n = write_report(
            reader,
            html,
            prof,
            tokenizer=tok,
            rows=rows,
            ranking=ranking,
            limit=limit,
            select=ids,
            summaries=summaries,
            notes=notes + rows.notes,
        )
        for line in rows.notes:
            print(f"note: {line}")
        print(f"\nwrote {html} ({n} rows in full, index of {len(reader)})")
    if export is not None:
        counts = export_cache(cache, export)
        print(f"\nexported {export} ({counts['rows']} rows, {counts['targets']} targets)")
    if not audit:
        return 0
    from pipeline.inspection.audit import audit as run_audit

    problems = run_audit(reader, tokenizer=tok, cfg=cfg, dataset=str(dataset) if dataset else None)
    print()
    if not problems:
        print("audit: ok")
        return 0
    print(f"audit: {len(problems)} problem(s)")
    for p in problems:
        print(f"  - {p}")
    return 1
