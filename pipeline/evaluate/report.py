"""Side-by-side comparison of evaluated runs: a markdown table and a CSV for ``dvc plots``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

COLUMNS = (
    "ce",
    "token_accuracy",
    "kl",
    "caption_f1",
    "hallucination_rate",
    "bleu4",
    "rouge_l",
    "cider",
    "train_wall_s",
)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def describe_recipe(recipe: dict[str, Any] | None) -> str:
    """``gkd_cached, lr 0.003, beta 0, sft_alpha 0`` (what ``run_evaluation`` records as ``recipe``)."""
    if not recipe:
        return "-"
    parts = [str(recipe.get("trainer", "?")), f"lr {recipe.get('learning_rate', 0):g}"]
    parts += [f"{k} {recipe[k]:g}" for k in ("beta", "sft_alpha", "lmbda") if recipe.get(k) is not None]
    return ", ".join(parts)


def winners(rows: list[dict[str, Any]]) -> list[str]:
    """The students (every run but the first, the teacher) best on caption F1 and on CE, with recipes."""
    students = rows[1:] if len(rows) > 1 else rows
    lines = []
    for metric, pick, word in (("caption_f1", max, "highest caption F1"), ("ce", min, "lowest CE")):
        scored = [r for r in students if r.get(metric) is not None]
        if scored:
            best = pick(scored, key=lambda r: r[metric])
            lines.append(f"Student with the {word}: {best['run']} ({best[metric]:.4f}; {best['recipe']}).")
    return lines


def compare_runs(metric_files: list[Path], out_dir: Path) -> list[dict[str, Any]]:
    """Read each run's metrics JSON; write ``comparison.md`` and ``comparison.csv`` to ``out_dir``.

    The first run is the teacher (``params.yaml`` lists it first); the markdown ends with the students
    best on caption F1 and on CE, each named with its recipe."""
    rows = []
    for f in metric_files:
        m = json.loads(Path(f).read_text())
        rows.append(
            {
                "run": Path(f).stem,
                **{c: m.get(c) for c in COLUMNS},
                "recipe": describe_recipe(m.get("recipe")),
            }
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["| run | " + " | ".join(COLUMNS) + " | recipe |", "|---" * (len(COLUMNS) + 2) + "|"]
    lines += ["| " + " | ".join([r["run"], *(_fmt(r[c]) for c in COLUMNS), r["recipe"]]) + " |" for r in rows]
    lines += ["", *winners(rows)]
    (out_dir / "comparison.md").write_text("\n".join(lines) + "\n")
    with open(out_dir / "comparison.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["run", *COLUMNS, "recipe"])
        w.writeheader()
        w.writerows(rows)
    return rows


def attach_train_time(metrics_path: Path, run_dir: Path) -> None:
    """Copy ``train_wall_s`` from a run's ``train_time.json`` into its metrics JSON (if both exist)."""
    t = Path(run_dir) / "train_time.json"
    if not t.is_file() or not Path(metrics_path).is_file():
        return
    m = json.loads(Path(metrics_path).read_text())
    m["train_wall_s"] = json.loads(t.read_text()).get("train_wall_s")
    Path(metrics_path).write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
