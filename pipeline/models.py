"""Loading models: the teacher (cache stage, live teacher) and a trained student (evaluation).

One home, so every stage resolves the same directory, model type and dtype, and places the model on
devices the same way. ms-swift's ``get_model_processor`` does the loading (its model registry knows
Qwen2.5-VL / Qwen3-VL and applies their processor settings); ms-swift is imported lazily.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import DistillConfig
    from pipeline.encoding import RowEncoder

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def teacher_device_map() -> Any:
    """Where a teacher goes: spread over the node's GPUs (``"auto"``) when one process has several,
    this rank's GPU under torchrun, ``None`` (CPU) without CUDA."""
    if not torch.cuda.is_available():
        return None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and torch.cuda.device_count() > 1:
        return "auto"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def load_teacher(cfg: DistillConfig, device_map: Any = None) -> Any:
    """The teacher of ``cfg`` (``rlhf.teacher_model``, else ``custom.teacher_cache``'s source) in eval
    mode, in ``model.torch_dtype``, with ``device_map`` (see ``teacher_device_map``)."""
    from swift.model import get_model_processor

    from pipeline.fingerprint import teacher_path
    from pipeline.trust import TEACHER_KEY, require_trusted

    where = teacher_path(cfg)
    require_trusted(where, cfg.custom.teacher_trust_remote_code, TEACHER_KEY)
    model, _ = get_model_processor(
        where,
        model_type=(cfg.rlhf.teacher_model_type if cfg.rlhf else None) or cfg.model.model_type,
        torch_dtype=getattr(torch, cfg.model.torch_dtype),
        device_map=device_map,
    )
    model.eval()
    return model


def resolve_checkpoint(cfg: DistillConfig, checkpoint: str | Path | None) -> Path:
    """The model directory to evaluate.

    ``checkpoint`` may be a model dir (``config.json`` or a LoRA ``adapter_config.json``) or a run
    directory; ``None`` means ``cfg.train.output_dir``. In a run directory a ``final`` dir wins, else
    the highest-numbered ``checkpoint-N`` (numerically: ms-swift keeps the last ``save_total_limit``).
    """
    root = Path(checkpoint if checkpoint is not None else cfg.train.output_dir)
    if _is_model_dir(root):
        return root
    if (root / "final").is_dir() and _is_model_dir(root / "final"):
        return root / "final"
    steps = [(int(m.group(1)), p) for p in root.glob("checkpoint-*") if (m := _CHECKPOINT_RE.match(p.name))]
    steps = [(n, p) for n, p in steps if _is_model_dir(p)]
    if not steps:
        raise ConfigError(
            f"{root}: no model to evaluate (no config.json / adapter_config.json, no final/ or "
            "checkpoint-N/ inside); pass --checkpoint or train first"
        )
    return max(steps)[1]


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def load_trained(cfg: DistillConfig, checkpoint: str | Path | None) -> tuple[Any, RowEncoder, Path]:
    """``(model in eval mode, encoder, resolved checkpoint dir)`` of a trained model.

    A LoRA checkpoint is applied to ``cfg.model.model`` and merged, so the fp32 head path sees a plain
    model. On CPU the weights load in float32 whatever ``model.torch_dtype`` says: CPU half-precision
    matmuls are slow and evaluation on CPU is the tiny-model path.
    """
    from swift.model import get_model_processor

    from pipeline.encoding import RowEncoder

    path = resolve_checkpoint(cfg, checkpoint)
    cuda = torch.cuda.is_available()
    dtype = getattr(torch, cfg.model.torch_dtype) if cuda else torch.float32
    device_map = "cuda:0" if cuda else "cpu"
    is_adapter = (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()
    from pipeline.config import model_location

    base = model_location(cfg.model.model, "model.model", cfg.config_path) if is_adapter else str(path)
    from pipeline.trust import STUDENT_KEY, require_trusted

    for directory in dict.fromkeys((str(path), base)):  # a checkpoint, and an adapter's base model
        require_trusted(directory, cfg.model.trust_remote_code, STUDENT_KEY)
    model, processor = get_model_processor(
        base, model_type=cfg.model.model_type, torch_dtype=dtype, device_map=device_map
    )
    if is_adapter:
        from swift.tuners import Swift

        model = Swift.from_pretrained(model, str(path)).merge_and_unload()
    model.eval()
    encoder = RowEncoder.from_config(cfg, processor=processor)
    # The Qwen-VL collator computes M-RoPE position ids with the model's own rope code.
    encoder.template.model = model
    return model, encoder, path
