"""The cache-format benchmark: its generator is the issue's, and it runs and reports its keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp

from pipeline.bench.cache_format import bench_cache_format, cut_topk, synthetic_topk
from pipeline.cli import main


def reference_synthetic_topk(n=50_000, k=128, vocab=151_936, seed=0):  # verbatim from the issue
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.9, 4.0, size=n)
    noise = rng.normal(0.0, 0.25, size=(n, k))
    u = rng.random((n, k))
    r = np.arange(1, k + 1, dtype=np.float64)
    logits = -a[:, None] * np.log(r)[None, :] + noise
    grid = np.linspace(0.9, 4.0, 256)
    rest = np.arange(k + 1, vocab + 1, dtype=np.float64)
    log_rest = np.interp(a, grid, [logsumexp(-g * np.log(rest)) for g in grid])
    log_z = np.logaddexp(logsumexp(logits, axis=1), log_rest)
    logprobs = -np.sort(-(logits - log_z[:, None]), axis=1)
    tail = log_rest - log_z
    ids = np.floor(vocab * u**3).astype(np.int64)
    for i in range(n):
        seen = set()
        for j in range(k):
            while ids[i, j] in seen:
                ids[i, j] = (ids[i, j] + 1) % vocab
            seen.add(ids[i, j])
    return ids, logprobs, tail


@pytest.mark.parametrize(
    ("n", "k", "vocab", "seed"), [(400, 128, 151_936, 0), (300, 64, 500, 3), (50, 16, 40, 1)]
)
def test_vectorised_generator_is_bit_identical(n: int, k: int, vocab: int, seed: int) -> None:
    got, want = synthetic_topk(n, k, vocab, seed), reference_synthetic_topk(n, k, vocab, seed)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and np.array_equal(g, w)
    ids, lp, tail = got
    assert all(len(set(row)) == k for row in ids.tolist())
    np.testing.assert_allclose(np.logaddexp(logsumexp(lp, axis=1), tail), 0.0, atol=1e-9)
    _, lp16, tail16 = cut_topk(ids, lp, tail, 16 if k > 16 else k)
    np.testing.assert_allclose(np.logaddexp(logsumexp(lp16, axis=1), tail16), 0.0, atol=1e-9)


def test_bench_runs_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = bench_cache_format(top_ks=(8, 64), n=3000, out_dir=tmp_path)
    assert capsys.readouterr().out == ""  # the library returns; the command prints
    summary = {k: v for k, v in result.items() if k != "by_k"}
    keys = {
        "bytes_per_token",
        "kl_fidelity",
        "kl_fidelity_p99",
        "decode_tokens_per_s",
        "baseline_bytes_per_token",
        "packed_bytes_per_token",
    }
    assert keys <= set(summary) and summary["k"] == 64
    assert {k: result[k] for k in keys} == {k: summary[k] for k in keys}
    assert summary["baseline_bytes_per_token"] == 512 and summary["packed_bytes_per_token"] == 272
    assert summary["bytes_per_token"] < summary["packed_bytes_per_token"]
    assert 0 < summary["kl_fidelity"] < 1e-4 and summary["decode_tokens_per_s"] > 0
    assert set(result["by_k"]) == {8, 64} and (tmp_path / "k64" / "manifest.json").exists()
    assert main(["bench", "cache-format", "--n", "600", "--k", "4", "--cache", str(tmp_path / "k8")]) == 0
    out, err = capsys.readouterr()
    assert "real cache" in err and " B/token" in err  # the table, on the console's log
    (line,) = out.strip().splitlines()  # stdout: the JSON line alone
    assert json.loads(line)["k"] == 4 and set(json.loads(line)) >= keys
