"""``distill inspect`` on a cache with teacher-written rows (the tiny teacher writes the pool's captions):
the summary's counts, the sample table, the report's flags and "worst first" lines, and the audit."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.cache.format import CachedSample
from pipeline.cache.reader import CacheReader
from pipeline.cache.writer import CacheWriter
from pipeline.inspection.command import run_inspect
from pipeline.inspection.summary import rank_rows
from pipeline.inspection.tokens import RowStats
from tests.teacher.test_written import written_cache  # noqa: F401  (the fixture)

MAX_NEW = 10  # written_max_new_tokens of the fixture's cache


def _cache_root(written: tuple[Any, dict[str, Any]]) -> Path:
    return Path(written[0].custom.teacher_cache) / "train"


def _samples(root: Path) -> dict[str, CachedSample]:
    return {s.sample_id: s for s in CacheReader(root).iter_samples()}


def test_summary_counts_the_written_rows_as_the_stage_recorded_them(
    written_cache: tuple[Any, dict[str, Any]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.encoding import RowEncoder
    from pipeline.generation import stop_token_ids

    cfg, counts = written_cache
    root = _cache_root(written_cache)
    samples = _samples(root)
    written = [s for s in samples.values() if s.teacher_written]
    hit = sum(len(s.written_ids) == MAX_NEW for s in written)
    changed = sum(
        s.target_ids[: len(s.written_ids)].tolist() != s.written_ids.tolist()
        or s.num_targets <= len(s.written_ids)
        for s in written
    )
    # The length rule finds exactly the rows the stage kept unfinished (the stop token is never kept).
    recorded = counts["teacher_written"]
    assert recorded["written"] == len(written) > 0 and recorded["unfinished_kept"] == hit > 0
    stops = set(stop_token_ids(RowEncoder.from_config(cfg)))
    exact = sum(
        not (
            s.num_targets > len(s.written_ids)
            and s.target_ids[: len(s.written_ids)].tolist() == s.written_ids.tolist()
            and int(s.target_ids[len(s.written_ids)]) in stops
        )
        for s in written
    )
    assert recorded["retokenized"] == exact
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["counts"]["tags"]["teacher_written"] == len(written)  # stored, not only printed

    assert run_inspect(root) == 0
    out = capsys.readouterr().out
    assert (
        f"teacher-written    {len(written)} rows; hit max_new_tokens {MAX_NEW}: {hit} cached (+0 skipped); "
        f"ids changed on decode-then-encode: {changed}"
    ) in out
    assert (
        f"recorded         written {len(written)}, retokenized {exact}, unfinished kept {hit}, "
        "unfinished skipped 0"
    ) in out


def test_sample_table_shows_what_the_teacher_wrote(
    written_cache: tuple[Any, dict[str, Any]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = _cache_root(written_cache)
    samples = _samples(root)
    pool = next(s for s in samples.values() if s.teacher_written and len(s.written_ids) == MAX_NEW)
    assert run_inspect(root, sample=pool.sample_id) == 0
    table = capsys.readouterr().out.split(f"sample {pool.sample_id}")[1].splitlines()
    assert table[1].startswith("teacher-written") and f"hit max_new_tokens {MAX_NEW}" in table[1]
    assert table[2] == f"written text       {pool.written_text!r}"
    labelled = next(s for s in samples.values() if not s.teacher_written)
    assert run_inspect(root, sample=labelled.sample_id) == 0
    out = capsys.readouterr().out.split(f"sample {labelled.sample_id}")[1]
    assert "written text" not in out and out.splitlines()[1].split()[0] == "pos"


def test_report_flags_written_rows_and_ranks_those_that_hit_the_limit(
    written_cache: tuple[Any, dict[str, Any]],  # noqa: F811
    tmp_path: Path,
) -> None:
    import html

    root = _cache_root(written_cache)
    samples = _samples(root)
    written = [sid for sid, s in samples.items() if s.teacher_written]
    hit = {sid for sid in written if len(samples[sid].written_ids) == MAX_NEW}
    labelled = next(sid for sid, s in samples.items() if not s.teacher_written)
    out = tmp_path / "report.html"
    assert run_inspect(root, html=out, select=",".join([*written, labelled])) == 0
    page = out.read_text()
    for sid in written:
        section = page.split(f'<h2 id="{sid}">')[1].split("<h2 ")[0]
        assert f"<q>{html.escape(samples[sid].written_text)}</q>" in section
        assert ("hit max_new_tokens without stopping" in section) == (sid in hit)
    labelled_section = page.split(f'<h2 id="{labelled}">')[1].split("<h2 ")[0]
    assert "teacher-written" not in labelled_section
    # The written rows re-encode (with the teacher's response) to the cached hash: context lines up.
    assert "hashes differently" not in page
    quick = re.search(r"<li>teacher-written rows that hit max_new_tokens: (.*?)</li>", page)
    assert quick is not None
    linked = re.findall(r'href="#([^"]+)"', quick.group(1))
    assert linked and set(linked) <= hit and len(linked) == min(len(hit), 8)
    # --select by the ranking: hit rows first, lowest mean p(target) first among them
    assert run_inspect(root, html=out, select="written_limit", limit=len(hit)) == 0
    shown = re.findall(r'<h2 id="([^"]+)">', out.read_text())
    assert set(shown) == hit


def _copy_with_one_changed_row(root: Path, dest: Path) -> str:
    """A copy of the cache in which every written row's ids are its leading targets (the end-of-turn
    and newline after them) except one row's; returns that row's id."""
    reader = CacheReader(root)
    manifest = reader.manifest
    samples = list(reader.iter_samples())
    written = [s for s in samples if s.teacher_written]
    for s in written:
        s.written_ids = s.target_ids[: s.num_targets - 2].copy()
    changed = written[-1]
    changed.written_ids[0] = (changed.written_ids[0] + 1) % reader.vocab_size
    with CacheWriter(
        dest,
        fingerprint=manifest["fingerprint"],
        top_k=reader.top_k,
        vocab_size=reader.vocab_size,
        logprob_encoding=manifest["layout"]["logprob_encoding"],
        extra_meta={"sources": manifest["sources"]},
    ) as w:
        for s in samples:
            w.add(s)
        w.finalize(rows_in=len(samples))
    return changed.sample_id


def test_ids_changed_on_decode_then_encode_are_flagged(
    written_cache: tuple[Any, dict[str, Any]],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    copy = tmp_path / "copy" / "train"
    sid = _copy_with_one_changed_row(_cache_root(written_cache), copy)
    out_html = tmp_path / "r.html"
    assert run_inspect(copy, sample=sid, html=out_html, select="ids_changed", limit=1) == 0
    out = capsys.readouterr().out
    assert "ids changed on decode-then-encode: 1\n" in out
    assert "decode-then-encode changed the ids" in out.split(f"sample {sid}")[1].splitlines()[1]
    page = out_html.read_text()
    assert re.findall(r'<h2 id="([^"]+)">', page) == [sid]
    assert "decode-then-encode changed the ids" in page.split(f'<h2 id="{sid}">')[1]
    quick = re.search(r"<li>teacher-written rows whose ids changed on decode-then-encode: (.*?)</li>", page)
    assert quick is not None and re.findall(r'href="#([^"]+)"', quick.group(1)) == [sid]


def test_audit_passes_on_the_written_cache(
    written_cache: tuple[Any, dict[str, Any]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    import dataclasses

    cfg, _ = written_cache
    root = _cache_root(written_cache)
    # The fixture caches the first rows only (--limit): the audit, like training, accepts that only
    # with the opt-in, and says so without it.
    assert run_inspect(root, audit=True, cfg=cfg) == 1
    assert "coverage: " in capsys.readouterr().out
    cfg = dataclasses.replace(cfg, custom=dataclasses.replace(cfg.custom, allow_partial_cache=True))
    # with the config: written rows re-encode with the teacher's response, stop ids from the encoder
    assert run_inspect(root, audit=True, cfg=cfg) == 0
    # without: stop words recorded in the fingerprint, resolved through the recorded tokenizer
    assert run_inspect(root, audit=True) == 0
    assert capsys.readouterr().out.count("audit: ok") == 2


def test_end_of_turn_comes_from_the_template_not_a_hard_coded_string() -> None:
    import pipeline.inspection.audit as audit_module
    from pipeline.inspection.audit import end_of_turn_ids, forbidden_targets

    assert "<|im_end|>" not in Path(audit_module.__file__).read_text()
    vocab = {"hello": 1, "</turn>": 7, "<pad>": 8, "<img>": 9}
    tok = SimpleNamespace(
        get_vocab=lambda: vocab,
        eos_token_id=None,
        all_special_ids=[7, 8],
        convert_ids_to_tokens=lambda i: {v: k for k, v in vocab.items()}[i],
        added_tokens_decoder={},
    )
    encoding = {"template_meta": {"stop_words": ["</turn>", "two tokens"]}, "placeholder_ids": {"image": 9}}
    allowed = end_of_turn_ids(tok, encoding)
    assert allowed == [7]
    assert forbidden_targets(tok, encoding["placeholder_ids"], allowed) == {8: "<pad>", 9: "image"}
    assert end_of_turn_ids(tok, {}) == [] and end_of_turn_ids(None, encoding) == []


def test_written_limit_ranking_puts_rows_that_hit_the_limit_first() -> None:
    def row(sid: str, p: float, hit: bool, changed: bool = False) -> RowStats:
        return RowStats(sid, 10, 3, p, p, 0.0, 0.0, 1.0, 0, True, MAX_NEW if hit else 4, changed, hit)

    rows = [row("a", 0.1, False), row("b", 0.9, True), row("c", 0.5, True, True), row("d", 0.2, False)]
    assert [r.sample_id for r in rank_rows(rows, "written_limit")] == ["c", "b", "a", "d"]
    # ties keep storage order
    assert [r.sample_id for r in rank_rows(rows, "ids_changed")] == ["c", "a", "b", "d"]
