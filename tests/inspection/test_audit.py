"""``distill inspect``: summary numbers, per-token table, export, the command, and every audit check.

Synthetic caches are written with the real ``CacheWriter`` from teacher distributions that are a
softmax over the demo vocabulary, peaked on a chosen id: the true target (a correct cache) or the next
position's target (the off-by-one bug of taking teacher logits at j instead of j-1). Corruptions that
the writer itself refuses (NaN, positions or ids out of range) are injected by wrapping the real reader.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cache.format import CachedSample
from pipeline.cache.reader import CacheReader
from pipeline.cache.writer import CacheWriter
from pipeline.inspection.audit import audit, json_normal
from pipeline.inspection.command import export_cache, run_inspect
from pipeline.inspection.summary import sample_table, summarise

VOCAB = 422  # len() of the demo tokenizer: BPE ids < 400, then Qwen's added tokens
IM_END, IMAGE_PAD, VIDEO_PAD, VISION_START = 402, 412, 413, 409
K = 16
N_SAMPLES, N_TARGETS, START = 10, 30, 20  # 300 supervised tokens: above the 200 the shift check needs
PLACEHOLDERS = {"image_token_id": IMAGE_PAD, "video_token_id": VIDEO_PAD}


def teacher_rows(
    peak_ids: np.ndarray,
    targets: np.ndarray,
    rng: np.random.Generator,
    k: int = K,
    vocab: int = VOCAB,
    boost: float = 10.0,
) -> tuple[np.ndarray, ...]:
    """Exact top-k, tail and target logprobs of softmax(noise + boost at ``peak_ids``), float64 -> f32.

    Returns (topk_ids int64 [n, k], topk_logprobs f32 [n, k], tail f32 [n], target_logprobs f32 [n]).
    """
    n = len(peak_ids)
    logits = rng.normal(0.0, 1.0, (n, vocab))
    logits[np.arange(n), peak_ids] += boost
    lp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    order = np.argsort(-lp, axis=1, kind="stable")
    ids = order[:, :k]
    rest = np.take_along_axis(lp, order[:, k:], axis=1)
    tail = np.logaddexp.reduce(rest, axis=1) if k < vocab else np.full(n, -np.inf)
    return (
        ids.astype(np.int64),
        np.take_along_axis(lp, ids, axis=1).astype(np.float32),
        tail.astype(np.float32),
        lp[np.arange(n), targets].astype(np.float32),
    )


def make_sample(
    sid: str,
    targets: np.ndarray,
    peaks: np.ndarray,
    rng: np.random.Generator,
    start: int = START,
    encoding_hash: str = "0" * 64,
    positions: np.ndarray | None = None,
    num_tokens: int | None = None,
    boost: float = 10.0,
) -> CachedSample:
    ids, lps, tail, tlp = teacher_rows(peaks, targets, rng, boost=boost)
    pos = np.arange(start, start + len(targets), dtype=np.int64) if positions is None else positions
    return CachedSample(
        sid, encoding_hash, num_tokens or int(pos[-1]) + 1, pos, targets.astype(np.int64), ids, lps, tail, tlp
    )


def write_cache(
    root: Path,
    samples: list[CachedSample],
    encoding: str = "quantized",
    fingerprint: dict[str, Any] | None = None,
    skips: tuple[tuple[str, str], ...] = (),
) -> CacheReader:
    fp = fingerprint or {"encoding": {"placeholder_ids": PLACEHOLDERS}, "top_k": K}
    with CacheWriter(root, fingerprint=fp, top_k=K, vocab_size=VOCAB, logprob_encoding=encoding) as w:
        for s in samples:
            w.add(s)
        for sid, reason in skips:
            w.skip(sid, reason)
    return CacheReader(root)


def synthetic(
    root: Path,
    shift: int = 0,
    encoding: str = "quantized",
    seed: int = 0,
    edit: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    **kw: Any,
) -> CacheReader:
    """A cache of ``N_SAMPLES`` samples; the teacher peaks on ``targets[i + shift]`` (0: correct)."""
    rng = np.random.default_rng(seed)
    samples = []
    for s in range(N_SAMPLES):
        targets = rng.integers(0, 400, N_TARGETS + 1)  # one spare so the last row can peak on "the next"
        peaks = (
            targets[shift : shift + N_TARGETS] if shift >= 0 else np.r_[targets[0], targets[: N_TARGETS - 1]]
        )
        targets = targets[:N_TARGETS]
        if edit is not None:
            edit(s, targets, peaks)
        samples.append(make_sample(f"s{s:02d}", targets, peaks, rng, **kw))
    return write_cache(root, samples, encoding, skips=(("gone", "missing_image"),))


class Corrupted:
    """The reader surface of ``reader`` with ``fn`` applied to one sample (corruptions the writer refuses)."""

    def __init__(self, reader: CacheReader, sample_id: str, fn: Callable[[CachedSample], None]):
        self.reader, self.sample_id, self.fn = reader, sample_id, fn
        self.manifest, self.top_k, self.vocab_size = reader.manifest, reader.top_k, reader.vocab_size
        self.sample_ids = reader.sample_ids

    def __len__(self) -> int:
        return len(self.reader)

    def __contains__(self, sid: object) -> bool:
        return sid in self.reader

    def get(self, sid: str) -> CachedSample:
        s = self.reader.get(sid)
        if sid == self.sample_id:
            self.fn(s)
        return s


@pytest.fixture(scope="module")
def correct(tmp_path_factory: pytest.TempPathFactory) -> CacheReader:
    return synthetic(tmp_path_factory.mktemp("correct") / "train")


# -- audit: synthetic caches -----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["quantized", "fp32"])
def test_correct_cache_passes(tmp_path: Path, encoding: str) -> None:
    # The default lossy encoding must pass the mass and target checks too (cell bounds, not equality).
    assert audit(synthetic(tmp_path / encoding, encoding=encoding)) == []


def test_broad_teacher_passes_mass_check(tmp_path: Path) -> None:
    # A flat teacher spreads mass over all k entries and the tail: the widest quantisation drift.
    assert audit(synthetic(tmp_path / "flat", boost=0.5)) == []


@pytest.mark.parametrize("shift, word", [(1, "next"), (-1, "previous")])
def test_off_by_one_is_flagged(tmp_path: Path, shift: int, word: str) -> None:
    problems = audit(synthetic(tmp_path / "shifted", shift=shift))
    assert len(problems) == 1, problems
    assert problems[0].startswith("off-by-one:") and f"the {word} position's target" in problems[0]


def test_weak_teacher_is_not_called_off_by_one(tmp_path: Path) -> None:
    # A teacher that agrees with nothing (random init) has low own AND neighbour agreement: no signature.
    assert audit(synthetic(tmp_path / "weak", boost=0.0)) == []


def test_special_and_placeholder_targets_are_flagged(tmp_path: Path, demo_assets: dict[str, Path]) -> None:
    from pipeline.inspection.sources import load_tokenizer

    def edit(s: int, targets: np.ndarray, peaks: np.ndarray) -> None:
        if s == 3:
            targets[5] = peaks[5] = IMAGE_PAD
        if s == 6:
            targets[7] = peaks[7] = VISION_START
        if s == 8:  # the end-of-turn token and the "\n" after it are legitimate targets
            targets[-2:] = peaks[-2:] = [IM_END, 198]

    reader = synthetic(tmp_path / "special", edit=edit)
    without = audit(reader)  # no tokenizer: the manifest's placeholder ids are still known
    assert len(without) == 1 and "'s03'" in without[0] and "<|image_pad|>" not in without[0]
    assert "image_token_id" in without[0]
    with_tok = audit(reader, tokenizer=load_tokenizer(demo_assets["student"]))
    assert [p.split(":")[0] for p in with_tok] == ["special-target", "special-target"]
    assert (
        "'s03'" in with_tok[0] and "<|image_pad|>" in with_tok[0] and f"position {START + 5}" in with_tok[0]
    )
    assert "'s06'" in with_tok[1] and "<|vision_start|>" in with_tok[1]


def _set_last_position(s: CachedSample) -> None:
    s.positions[-1] = s.num_tokens


def _set_topk_id(s: CachedSample) -> None:
    s.topk_ids[4, 3] = VOCAB


def _set_nan(s: CachedSample) -> None:
    s.topk_logprobs[2, 1] = np.nan


def _set_position_zero(s: CachedSample) -> None:
    s.positions[0] = 0


@pytest.mark.parametrize(
    "fn, check, needle",
    [
        (_set_last_position, "position", "outside [1, 50)"),
        (_set_position_zero, "position", "first 0"),
        (_set_topk_id, "vocab", f"top-k id {VOCAB} outside [0, {VOCAB})"),
        (_set_nan, "non-finite", f"top-k logprob NaN or +inf at position {START + 2}"),
    ],
)
def test_corruptions_the_writer_refuses_are_flagged(
    correct: CacheReader, fn: Callable[[CachedSample], None], check: str, needle: str
) -> None:
    problems = audit(Corrupted(correct, "s04", fn))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{check}: sample 's04'") and needle in problems[0]


# fp32 is exact: 1e-3 is ten times the tolerance. The quantized cache can only be held to its cells
# (about 2 * step * sum(sqrt(p)) ~ 0.02 wide at k=16 on this teacher), so its error must be larger.
@pytest.mark.parametrize("encoding, extra", [("quantized", 0.05), ("fp32", 1e-3)])
def test_mass_off_one_is_flagged(tmp_path: Path, encoding: str, extra: float) -> None:
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 400, 40)
    good = make_sample("good", targets, targets, rng)
    bad = make_sample("bad", targets, targets, rng)
    bad.tail_logprobs[10] = np.log(np.exp(np.float64(bad.tail_logprobs[10])) + extra)
    problems = audit(write_cache(tmp_path / "mass", [good, bad], encoding))
    assert len(problems) == 1, problems
    assert problems[0].startswith("mass: sample 'bad'") and f"position {START + 10}" in problems[0]


def test_target_logprob_inconsistent_with_topk_is_flagged(correct: CacheReader) -> None:
    def fn(s: CachedSample) -> None:
        s.target_logprobs[0] = np.log(0.01)  # the target is the teacher's top-1 at ~0.9

    problems = audit(Corrupted(correct, "s01", fn))
    assert len(problems) == 1 and problems[0].startswith("target: sample 's01'"), problems


# -- summary, table, HTML, export ------------------------------------------------------------------


def test_summary_numbers(correct: CacheReader) -> None:
    s = summarise(correct)
    assert s["samples"] == N_SAMPLES and s["supervised_tokens"] == N_SAMPLES * N_TARGETS
    assert s["top1_agreement"] == 1.0 and s["target_in_topk"] == 1.0
    assert s["shards"] == 1 and s["bytes"] == correct.manifest["shards"][0]["bytes"]
    assert s["raw_bytes_per_token"] == 8 * K + 16
    assert s["bytes_per_token"] == pytest.approx(s["bytes"] / s["supervised_tokens"])
    assert s["compression_ratio"] == pytest.approx(s["raw_bytes_per_token"] / s["bytes_per_token"])
    assert s["skipped"] == 1 and s["skipped_by_reason"] == {"missing_image": 1}
    assert set(s["tail_mass"]) == set(s["entropy"]) == {"p50", "p90", "p99", "mean", "max"}
    # A peaked teacher: most mass on the top-1, so entropy well below log(k+1) and a small tail.
    assert 0 < s["entropy"]["p50"] < 0.5 * np.log(K + 1)
    assert (
        0 < s["tail_mass"]["p50"] < 0.1
        and s["tail_mass"]["p50"] <= s["tail_mass"]["p99"] <= s["tail_mass"]["max"]
    )


def test_sample_table(correct: CacheReader, demo_assets: dict[str, Path]) -> None:
    from pipeline.inspection.sources import load_tokenizer

    plain = sample_table(correct, "s02")
    lines = plain.splitlines()
    assert len(lines) == 2 + N_TARGETS and lines[0].startswith("sample s02")
    first = correct.get("s02")
    assert lines[2].split()[:3] == [str(START), f"#{int(first.target_ids[0])}", "1"]
    text = sample_table(correct, "s02", load_tokenizer(demo_assets["student"]))
    assert "#" not in text.splitlines()[2].split()[1]
    with pytest.raises(ValueError, match="nope"):
        sample_table(correct, "nope")


def test_sample_table_marks_target_outside_topk(correct: CacheReader) -> None:
    def fn(s: CachedSample) -> None:
        s.target_ids[0] = 399 if 399 not in s.topk_ids[0] else 398
        s.target_logprobs[0] = -20.0

    line = sample_table(Corrupted(correct, "s00", fn), "s00").splitlines()[2]
    assert line.split()[2] == f">{K}"


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_export(correct: CacheReader, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"plain{suffix}"
    assert export_cache(correct.root, out) == {"rows": N_SAMPLES, "targets": N_SAMPLES * N_TARGETS}
    table = pq.read_table(out) if suffix == ".parquet" else pa.ipc.open_stream(out).read_all()
    assert table.num_rows == N_SAMPLES and "topk_logprobs" in table.column_names


def test_export_opens_as_a_hugging_face_dataset(correct: CacheReader, tmp_path: Path) -> None:
    """``datasets.Dataset.from_file`` reads the Arrow export as it is: no conversion step."""
    from datasets import Dataset

    out = tmp_path / "plain.arrow"
    export_cache(correct.root, out)
    ds = Dataset.from_file(str(out))
    assert len(ds) == N_SAMPLES and ds[0]["sample_id"] == "s00"
    first = correct.get("s00")
    assert ds[0]["target_ids"] == first.target_ids.tolist()
    np.testing.assert_array_equal(np.array(ds[0]["topk_ids"]), first.topk_ids)
    np.testing.assert_array_equal(np.array(ds[0]["topk_logprobs"], np.float32), first.topk_logprobs)


def test_run_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = synthetic(tmp_path / "good" / "train")
    bad = synthetic(tmp_path / "bad" / "train", shift=1)

    assert run_inspect(good.root, sample="s01", audit=True, html=tmp_path / "p.html") == 0
    out = capsys.readouterr().out
    assert "top-1 agreement    1.0000" in out and "sample s01" in out and "audit: ok" in out
    assert "manifest records no tokenizer location" in out  # written without sources: says what to pass
    assert (tmp_path / "p.html").is_file()
    assert run_inspect(bad.root, audit=True) == 1
    assert "off-by-one" in capsys.readouterr().out
    with pytest.raises(ValueError, match="holds splits"):  # the cache root instead of a split
        run_inspect(tmp_path / "good")


# -- audit --config: re-encoding with the real encoder ---------------------------------------------


@pytest.fixture(scope="module")
def encoded(demo_assets: dict[str, Path]) -> tuple[Any, Any, list[Any]]:
    """(cfg, encoder, the first 8 encoded train rows) with the demo student's template."""
    from pipeline.data import Row, read_rows
    from pipeline.encoding import RowEncoder

    ns = SimpleNamespace
    cfg = ns(
        model=ns(
            model=str(demo_assets["student"]),
            model_type="qwen2_5_vl",
            template="qwen2_5_vl",
            torch_dtype="float32",
            trust_remote_code=False,
        ),
        data=ns(
            system=None,
            max_length=512,
            truncation_strategy="delete",
            max_pixels=None,
            loss_scale="default",
            dataset=[str(demo_assets["train"])],
            val_dataset=[],
        ),
        # The caches below hold the first 8 rows: partial, which a run accepts only with this opt-in.
        custom=ns(top_k=K, logprob_encoding="quantized", allow_partial_cache=True),
    )
    encoder = RowEncoder.from_config(cast(Any, cfg))  # duck-typed config: only model/data are read
    rows = [r for r in read_rows(demo_assets["train"]) if isinstance(r, Row)][:8]
    return cfg, encoder, [encoder.encode(r) for r in rows]


def _cache_from_encodings(
    root: Path, encoder: Any, encs: list[Any], edit: Callable[[int, dict[str, Any]], None] | None = None
) -> CacheReader:
    from pipeline.fingerprint import tokenizer_hash

    rng = np.random.default_rng(2)
    samples = []
    for i, enc in enumerate(encs):
        pos = enc.target_positions()
        fields: dict[str, Any] = {
            "positions": pos,
            "targets": np.asarray(enc.labels)[pos],
            "hash": enc.encoding_hash,
        }
        if edit is not None:
            edit(i, fields)
        samples.append(
            make_sample(
                enc.sample_id,
                fields["targets"],
                fields["targets"],
                rng,
                encoding_hash=fields["hash"],
                positions=fields["positions"],
                num_tokens=len(enc.input_ids),
            )
        )
    fp = {"encoding": json_normal(encoder.settings()), "tokenizer": tokenizer_hash(encoder.tokenizer)}
    return write_cache(root, samples, fingerprint=fp)


def test_reencode_passes_on_matching_cache(encoded: tuple[Any, Any, list[Any]], tmp_path: Path) -> None:
    cfg, encoder, encs = encoded
    labels = encs[0].labels
    assert labels[encs[0].target_positions()[-2]] == IM_END  # the demo ends a turn with <|im_end|> "\n"
    reader = _cache_from_encodings(tmp_path / "train", encoder, encs)
    assert audit(reader, cfg=cfg, encoder=encoder) == []


def test_reencode_names_mismatching_samples(encoded: tuple[Any, Any, list[Any]], tmp_path: Path) -> None:
    cfg, encoder, encs = encoded

    def edit(i: int, f: dict[str, Any]) -> None:
        if i == 1:  # a stale hash (e.g. the image changed after caching)
            f["hash"] = "f" * 64
        if i == 3:  # targets shifted by one against unchanged positions
            f["targets"] = np.r_[f["targets"][1:], f["targets"][-1]]
        if i == 5:  # the first response token dropped
            f["positions"], f["targets"] = f["positions"][1:], f["targets"][1:]

    problems = audit(_cache_from_encodings(tmp_path / "train", encoder, encs, edit), cfg=cfg, encoder=encoder)
    by_sample = {encs[i].sample_id: [p for p in problems if repr(encs[i].sample_id) in p] for i in (1, 3, 5)}
    assert len(problems) == 3, problems
    assert "encoding hash differs" in by_sample[encs[1].sample_id][0]
    assert "target id(s) differ" in by_sample[encs[3].sample_id][0]
    assert "first supervised position (the first response token)" in by_sample[encs[5].sample_id][0]
    assert all(p.startswith("re-encode:") for p in problems)


def test_reencode_flags_changed_encoding_settings(
    encoded: tuple[Any, Any, list[Any]], tmp_path: Path
) -> None:
    cfg, encoder, encs = encoded
    reader = _cache_from_encodings(tmp_path / "train", encoder, encs[:2])
    manifest = json.loads(json.dumps(reader.manifest))
    manifest["fingerprint"]["encoding"]["template"]["max_length"] = 1024
    reader.manifest = manifest
    problems = audit(reader, cfg=cfg, encoder=encoder)
    assert len(problems) == 1 and "template.max_length: cache 1024, config 512" in problems[0], problems


def test_tokenizer_other_than_the_caches_is_flagged(
    encoded: tuple[Any, Any, list[Any]], tmp_path: Path
) -> None:
    _, encoder, encs = encoded
    reader = _cache_from_encodings(tmp_path / "train", encoder, encs[:2])
    assert audit(reader, tokenizer=encoder.tokenizer) == []
    manifest = json.loads(json.dumps(reader.manifest))
    manifest["fingerprint"]["tokenizer"]["len"] += 1
    reader.manifest = manifest
    problems = audit(reader, tokenizer=encoder.tokenizer)
    assert len(problems) == 1 and problems[0].startswith("tokenizer:") and "len" in problems[0], problems


def test_cli_inspect_audit_with_config(
    encoded: tuple[Any, Any, list[Any]],
    demo_assets: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.cli import main
    from tests.conftest import base_config, write_config

    _, encoder, encs = encoded
    reader = _cache_from_encodings(tmp_path / "cache" / "train", encoder, encs)
    raw = base_config(demo_assets, tmp_path / "run")
    raw["data"] |= {"truncation_strategy": "delete", "max_pixels": None, "loss_scale": "default"}
    raw["custom"]["allow_partial_cache"] = True  # the cache holds the first 8 rows only
    cfg = write_config(tmp_path / "c.yaml", raw)
    sid = encs[0].sample_id
    assert main(["inspect", str(reader.root), "--audit", "--config", str(cfg), "--sample", sid]) == 0
    out = capsys.readouterr().out
    assert "audit: ok" in out and f"sample {sid}" in out
    assert "<|im_end|>" in out  # token text from the config's student tokenizer
