"""The demo's seed sweep: `dvc exp run -S student.seed=N` for each seed, then mean and sd per run.

    python stages/demo/sweep.py --seeds 0 1 2      # writes metrics/sweep/sweep.{json,md}

Each experiment draws the student's fresh LLM layers from the seed (`init_student`) and re-runs the
student stages; the teacher, its caches and the teacher-written captions depend on no student knob and
are reused. Each experiment's metrics/<run>.json files are collected; the markdown table is the one
docs/guide.md quotes.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from pipeline.errors import exit_code

RUNS = (
    "teacher",
    "student_sft",
    "student_gkd_cached",
    "student_gkd_written",
    "student_sft_written",
    "student_gkd_live",
)
KEYS = ("caption_f1", "ce", "train_wall_s")


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("metrics/sweep"))
    a = p.parse_args()
    results: dict[str, dict[str, list[float]]] = {r: {k: [] for k in KEYS} for r in RUNS}
    for seed in a.seeds:
        subprocess.run(["dvc", "exp", "run", "-S", f"student.seed={seed}"], check=True)
        for run in RUNS:
            m = json.loads(Path(f"metrics/{run}.json").read_text())
            for k in KEYS:
                if m.get(k) is not None:
                    results[run][k].append(float(m[k]))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "sweep.json").write_text(json.dumps({"seeds": a.seeds, "runs": results}, indent=2) + "\n")
    lines = ["| run | caption F1 (test) | CE (test) | train wall-clock s |", "|---|---|---|---|"]
    lines += [f"| {r} | " + " | ".join(_mean_sd(results[r][k]) for k in KEYS) + " |" for r in RUNS]
    (a.out / "sweep.md").write_text(f"mean ± sd over seeds {a.seeds}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(exit_code(main))
