"""The demo teacher's entropy profile on one split, split by token class (object words vs wording).

    python -m pipeline.demo.entropy runs/demo/cache_test --tokenizer runs/demo/teacher/final \\
        --rows data/prepared/test.jsonl [--json out.json]

The cache must hold the split's rows (a cache stage run with ``data.dataset`` set to the split);
``--rows`` keeps only that file's sample ids, since a cache also holds the val split it was built
with. See :mod:`pipeline.inspection.entropy` for what the numbers mean.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.demo.captions import token_class
from pipeline.errors import exit_code
from pipeline.inspection.entropy import entropy_profile, format_profile


def classifier(tokenizer: Any) -> Callable[[int], str]:
    """Token id -> class, through the tokenizer's decoding of the id alone."""

    def classify(token_id: int) -> str:
        return token_class(tokenizer.decode([token_id], skip_special_tokens=False))

    return classify


def split_ids(rows_file: Path) -> set[str]:
    with rows_file.open(encoding="utf-8") as f:
        return {json.loads(line)["sample_id"] for line in f if line.strip()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cache", type=Path)
    p.add_argument("--tokenizer", type=Path, required=True, help="a model dir with the demo tokenizer")
    p.add_argument("--rows", type=Path, default=None, help="keep only this JSONL's sample ids")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    from pipeline.cache.policy import open_cache_dir
    from pipeline.inspection.sources import load_tokenizer

    reader = open_cache_dir(a.cache)
    ids = split_ids(a.rows) if a.rows else None
    prof = entropy_profile(reader, classifier(load_tokenizer(a.tokenizer)), a.threshold, ids)
    sys.stdout.write(format_profile(prof) + "\n")  # the script's result
    if a.json:
        a.json.write_text(json.dumps(prof, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(exit_code(main))
