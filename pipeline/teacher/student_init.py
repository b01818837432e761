"""Students initialised from the teacher: depth pruning and sharing (``distill init-student``).

A student that starts with the teacher's eyes learns the task from far fewer examples: the vision
tower and merger map pixels into the language model's embedding space, and learning that from
scratch takes the most data. Two ways in:

- ``prune``: keep a list of the teacher's LLM layers (Minitron-style depth pruning,
  https://arxiv.org/abs/2407.14679); the student is the teacher with the other layers removed. Every
  tensor is copied: vision tower, merger, embeddings, the kept layers, final norm and head.
- ``share``: a student with fresh LLM layers (fewer, or another width); the teacher's vision tower is
  copied, and the merger, embeddings, final norm and head wherever the student's shapes equal the
  teacher's (the merger's last projection writes the LLM width, so it is fresh when widths differ).

The output is a loadable checkpoint with the teacher's tokenizer, chat template and processor files
copied verbatim (so ``distill check`` accepts the pair) and ``student_init.json`` recording which
student tensor came from which teacher tensor, and which are freshly initialised.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

# Files of a checkpoint that hold weights or the model config; everything else (tokenizer, chat
# template, processor, generation config) is the teacher's and copied verbatim.
_WEIGHT_FILE = re.compile(r"(\.safetensors|\.bin|\.pt|\.index\.json)$")
_OWN_FILES = {"config.json", "student_init.json"}
_LAYER = re.compile(r"^model\.language_model\.layers\.(\d+)\.(.+)$")
# Tensor groups by key prefix (Qwen2.5-VL / Qwen3-VL layout in transformers >= 4.52).
GROUPS = (
    ("vision_tower", "model.visual.", "model.visual.merger."),
    ("merger", "model.visual.merger.", None),
    ("embeddings", "model.language_model.embed_tokens.", None),
    ("final_norm", "model.language_model.norm.", None),
    ("head", "lm_head.", None),
)


@dataclass
class StudentInitSpec:
    """What to build. ``mode`` "prune" needs ``keep_layers``; "share" needs ``num_layers``.

    keep_layers: teacher LLM layer indices kept, in order (prune), e.g. [0, 3].
    num_layers: LLM layers of the student (share; all fresh).
    hidden_size / intermediate_size / num_attention_heads / num_key_value_heads: the student's LLM
    shape (share; None = the teacher's). The head dimension must stay the teacher's (M-RoPE sections).
    seed: initialisation of the fresh tensors.
    """

    mode: str
    keep_layers: list[int] = field(default_factory=list)
    num_layers: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("prune", "share"):
            raise ConfigError(f"init-student mode must be 'prune' or 'share', got {self.mode!r}")
        if self.mode == "prune" and not self.keep_layers:
            raise ConfigError("init-student prune: --keep-layers is empty; name the teacher layers to keep")
        if self.mode == "share" and (self.num_layers is None or self.num_layers < 1):
            raise ConfigError("init-student share: --num-layers must be >= 1")


def _student_config(teacher_cfg: Any, spec: StudentInitSpec) -> Any:
    """The teacher's config with the student's LLM shape (a deep copy; the teacher's is untouched)."""
    import copy

    cfg = copy.deepcopy(teacher_cfg)
    text = cfg.text_config
    n_teacher = text.num_hidden_layers
    if spec.mode == "prune":
        bad = [i for i in spec.keep_layers if not 0 <= i < n_teacher]
        if bad or len(set(spec.keep_layers)) != len(spec.keep_layers):
            raise ConfigError(
                f"--keep-layers {spec.keep_layers}: indices must be distinct and in [0, {n_teacher}) "
                f"(the teacher has {n_teacher} LLM layers)"
            )
        n = len(spec.keep_layers)
        kept_types = [text.layer_types[i] for i in spec.keep_layers] if text.layer_types else None
    else:
        n = int(spec.num_layers or 0)
        head_dim = text.hidden_size // text.num_attention_heads
        for name in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
            value = getattr(spec, name)
            if value is not None:
                setattr(text, name, value)
        if text.hidden_size // text.num_attention_heads != head_dim:
            raise ConfigError(
                f"student hidden_size {text.hidden_size} / {text.num_attention_heads} heads gives head_dim "
                f"{text.hidden_size // text.num_attention_heads}, the teacher's is {head_dim}: keep it "
                "(the M-RoPE sections are sized for it)"
            )
        cfg.vision_config.out_hidden_size = text.hidden_size  # the merger writes the LLM width
        kept_types = [text.layer_types[0]] * n if text.layer_types else None
    text.num_hidden_layers = n
    if kept_types is not None:
        text.layer_types = kept_types
    if getattr(text, "max_window_layers", None) is not None:
        text.max_window_layers = min(text.max_window_layers, n)
    return cfg


def _source_key(key: str, spec: StudentInitSpec) -> str | None:
    """The teacher tensor a student tensor is copied from (None: fresh)."""
    m = _LAYER.match(key)
    if m:
        if spec.mode != "prune":
            return None
        return f"model.language_model.layers.{spec.keep_layers[int(m.group(1))]}.{m.group(2)}"
    return key


def _group(key: str) -> str:
    for name, prefix, exclude in GROUPS:
        if key.startswith(prefix) and not (exclude and key.startswith(exclude)):
            return name
    return "llm_layers" if _LAYER.match(key) else "other"


def _load_teacher_model(teacher_dir: Path, trust_remote_code: bool) -> Any:
    """The teacher as its transformers class names it in ``config.json``, on CPU, in its own dtype."""
    import transformers

    t_cfg = transformers.AutoConfig.from_pretrained(teacher_dir, trust_remote_code=trust_remote_code)
    arch = (t_cfg.architectures or [None])[0]
    cls = getattr(transformers, arch or "", None)
    if cls is None:
        raise ConfigError(
            f"{teacher_dir}/config.json: architectures {t_cfg.architectures!r} unknown to transformers"
        )
    return cls.from_pretrained(
        teacher_dir, dtype="auto", device_map="cpu", trust_remote_code=trust_remote_code
    )


def _copy_from_teacher(student: Any, teacher: Any, spec: StudentInitSpec) -> tuple[dict[str, str], list[str]]:
    """Copy every student tensor that has a same-shaped source in the teacher (``_source_key``); returns
    (copied: student key -> teacher key, fresh: the keys left at their random init)."""
    import torch

    t_state, s_state = teacher.state_dict(), student.state_dict()
    copied: dict[str, str] = {}
    fresh: list[str] = []
    with torch.no_grad():
        for key, tensor in s_state.items():
            src = _source_key(key, spec)
            if src is not None and src in t_state and t_state[src].shape == tensor.shape:
                tensor.copy_(t_state[src])
                copied[key] = src
            else:
                fresh.append(key)
    return copied, fresh


def init_student(
    teacher_dir: str | Path,
    out_dir: str | Path,
    spec: StudentInitSpec,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Write a student checkpoint initialised from the teacher at ``teacher_dir``; returns the report.

    The report (also ``out_dir/student_init.json``) has ``copied`` (student key -> teacher key),
    ``fresh`` (student keys left at their random init), ``groups`` (per group: copied / fresh tensor
    counts) and the parameter counts of both models. ``trust_remote_code`` (``--trust-remote-code``)
    lets a teacher that ships its own Python load; the student gets those files too (copied
    verbatim), so a config training it then needs ``model.trust_remote_code``.
    """
    import torch

    from pipeline.trust import require_trusted

    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    if not (teacher_dir / "config.json").is_file():
        raise ConfigError(f"{teacher_dir}: not a model directory (no config.json)")
    require_trusted(teacher_dir, trust_remote_code, "--trust-remote-code")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out_dir}: exists and is not empty; pass --overwrite to replace it")
        shutil.rmtree(out_dir)
    teacher = _load_teacher_model(teacher_dir, trust_remote_code)
    s_cfg = _student_config(teacher.config, spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        student = type(teacher)(s_cfg).to(teacher.dtype)
    copied, fresh = _copy_from_teacher(student, teacher, spec)
    groups: dict[str, dict[str, int]] = {}
    for key in student.state_dict():
        g = groups.setdefault(_group(key), {"copied": 0, "fresh": 0})
        g["copied" if key in copied else "fresh"] += 1
    student.generation_config = teacher.generation_config
    out_dir.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out_dir, safe_serialization=True)
    for path in sorted(teacher_dir.iterdir()):
        if path.is_file() and path.name not in _OWN_FILES and not _WEIGHT_FILE.search(path.name):
            shutil.copy2(path, out_dir / path.name)
    report = {
        "teacher": str(teacher_dir),
        "spec": asdict(spec),
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "groups": groups,
        "copied": copied,
        "fresh": fresh,
    }
    (out_dir / "student_init.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def summary_line(report: dict[str, Any]) -> str:
    """One line per group: ``vision_tower: 19 copied, 0 fresh`` ..."""
    parts = [f"{g}: {c['copied']} copied, {c['fresh']} fresh" for g, c in sorted(report["groups"].items())]
    return (
        f"student {report['student_parameters']:,} parameters (teacher {report['teacher_parameters']:,}); "
        + "; ".join(parts)
    )
