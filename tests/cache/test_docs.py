"""docs/cache_format.md's plain-numpy decoder agrees with the reader, so the spec stays true."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.cache.format import FORMAT_VERSION
from pipeline.cache.reader import CacheReader
from pipeline.cache.writer import CacheWriter
from tests.cache.helpers import random_sample

DOC = Path(__file__).resolve().parents[2] / "docs" / "cache_format.md"


def test_doc_decoder_matches_the_reader(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    assert text.startswith(f"# Teacher cache format, version {FORMAT_VERSION}\n")
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    namespace: dict = {}
    exec(compile(code.group(1), str(DOC), "exec"), namespace)  # our own doc, not stored data
    rng = np.random.default_rng(4)
    samples = [random_sample(rng, f"s{i}", n, 64, 2**20) for i, n in enumerate([0, 1, 30, 200])]
    with CacheWriter(tmp_path, fingerprint={}, top_k=64, vocab_size=2**20) as w:
        for s in samples:
            w.add(s)
    reader = CacheReader(tmp_path)
    for shard in tmp_path.glob("shard-*.arrow"):
        table = pa.ipc.open_file(shard).read_all()
        for batch in table.to_batches():
            for i in range(batch.num_rows):
                got = namespace["decode_row"](batch, i)
                want = reader.get(batch["sample_id"][i].as_py())
                for g, name in zip(
                    got,
                    ("topk_ids", "topk_logprobs", "tail_logprobs", "target_ids", "target_logprobs"),
                    strict=True,
                ):
                    np.testing.assert_array_equal(g, getattr(want, name), err_msg=name)
