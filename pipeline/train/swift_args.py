"""Build ms-swift's argument objects (``SftArguments`` / ``RLHFArguments``) from a ``DistillConfig``.

Training always builds ``SftArguments``: every variant runs on ms-swift's SFT trainer (see
``pipeline.train.trainer``). ``RLHFArguments`` (``rlhf_type="gkd"``) serve ms-swift's stock GKD trainer,
which ``distill bench train-step`` runs beside ours. ms-swift is imported lazily (~6 s).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from typing import Any

from pipeline.config import apply_vision_env, model_location, needs_live_teacher, vision_env
from pipeline.config_schema import DEEPSPEED_PRESETS, DistillConfig, TrainConfig
from pipeline.errors import ConfigError

# Every training variant runs on ms-swift's SFT trainer; RLHF arguments serve only the stock-GKD bench.
TRAINING_KIND = "sft"


def swift_kwargs(cfg: DistillConfig, kind: str = TRAINING_KIND) -> dict[str, Any]:
    """The keyword arguments ``to_swift_args`` passes to ms-swift (pure: no import, no filesystem)."""
    if kind not in ("sft", "rlhf"):
        raise ConfigError(f"to_swift_args: kind must be 'sft' or 'rlhf', got {kind!r}")
    m, d, t = cfg.model, cfg.data, cfg.train
    kw: dict[str, Any] = {
        "model": m.model,
        "model_type": m.model_type,
        "template": m.template,
        "torch_dtype": m.torch_dtype,
        # ms-swift maps float32 weights to fp16 autocast; we mean what the dtype says.
        "bf16": m.torch_dtype == "bfloat16",
        "fp16": m.torch_dtype == "float16",
        "dataset": list(d.dataset),
        "val_dataset": list(d.val_dataset),
        "max_length": d.max_length,
        "truncation_strategy": d.truncation_strategy,
        "max_pixels": d.max_pixels,
        "loss_scale": d.loss_scale,
        "dataloader_num_workers": d.dataloader_num_workers,
        "strict": cfg.custom.strict,
    }
    if m.attn_impl is not None:
        kw["attn_impl"] = m.attn_impl
    if d.system is not None:
        kw["system"] = d.system
    for f in dataclasses.fields(TrainConfig):
        if f.name != "extra":
            kw[f.name] = copy.deepcopy(getattr(t, f.name))
    if kind == "rlhf":
        if cfg.rlhf is None:
            raise ConfigError(f"{cfg.config_path or 'config'}: rlhf: RLHF arguments need an rlhf: block")
        kw.update(dataclasses.asdict(cfg.rlhf))
        if not needs_live_teacher(cfg):
            # Offline cached GKD: ms-swift would load the teacher for nothing (the cache stage reads
            # cfg.rlhf.teacher_model itself). Without one ms-swift logs "self-distillation mode";
            # our cached trainer never asks it for teacher logits.
            kw["teacher_model"] = kw["teacher_model_type"] = None
    extra = copy.deepcopy(t.extra)
    model_kwargs = {**vision_env(d), **(extra.pop("model_kwargs", None) or {})}
    if model_kwargs:
        kw["model_kwargs"] = model_kwargs  # ms-swift puts these in os.environ and records them in args.json
    kw.update(extra)
    return kw


def _swift_class(kind: str) -> type:
    from swift.arguments import RLHFArguments, SftArguments

    return RLHFArguments if kind == "rlhf" else SftArguments


def check_extra_keys(cfg: DistillConfig, kind: str = TRAINING_KIND) -> None:
    """Refuse ``train.extra`` keys that the ms-swift arguments class for ``kind`` does not have."""
    names = {f.name for f in dataclasses.fields(_swift_class(kind)) if f.init}
    rlhf_names = {f.name for f in dataclasses.fields(_swift_class("rlhf")) if f.init}
    for key in cfg.train.extra:
        if key in names:
            continue
        if key in rlhf_names:
            why = (
                "is an RLHF-only argument: training runs on ms-swift's SFT trainer (GKD settings go in "
                "the rlhf: block, the cache's k in custom.top_k)"
            )
        else:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            why = "is not an ms-swift argument" + (f"; did you mean {close[0]}?" if close else "")
        raise ConfigError(f"{cfg.config_path or 'config'}: train.extra.{key}: {why}")


def to_swift_args(cfg: DistillConfig, kind: str = TRAINING_KIND) -> Any:
    """ms-swift's argument object for this config: ``SftArguments`` (kind ``"sft"``) or
    ``RLHFArguments`` with ``rlhf_type="gkd"`` (kind ``"rlhf"``, ms-swift's stock GKD trainer only).

    Offline cached GKD (gkd_cached, lmbda 0) gets no ``teacher_model``: nothing in training asks
    the live teacher, and ms-swift would otherwise load it. Our trainer variant is not ms-swift's
    business: ``resolve_trainer_cls`` picks the trainer.

    Call it when a run starts, not to validate a config: ms-swift reads the model's config.json,
    creates ``train.output_dir``, and sets environment variables (``MIN_PIXELS``, and
    ``TENSORBOARD_LOGGING_DIR`` with ``setdefault``, so a second run in the same process logs to
    the first one's directory unless the caller resets it). Errors ms-swift raises about the values
    become ``ConfigError``.
    """
    kwargs = swift_kwargs(cfg, kind)
    where = cfg.config_path or "config"
    check_extra_keys(cfg, kind)
    local = [("model.model", cfg.model.model)]
    if kwargs.get("teacher_model") is not None:
        local.append(("rlhf.teacher_model", kwargs["teacher_model"]))
    from pipeline.trust import STUDENT_KEY, TEACHER_KEY, require_trusted

    allowed = {"model.model": (cfg.model.trust_remote_code, STUDENT_KEY)}
    allowed["rlhf.teacher_model"] = (cfg.custom.teacher_trust_remote_code, TEACHER_KEY)
    for key, path in local:
        local_path = model_location(path, key, where)  # ms-swift would try to download a missing local path
        # ms-swift's argument classes already read the directory's config with trust_remote_code=True.
        require_trusted(local_path, *allowed[key])
    ds = cfg.train.deepspeed
    if ds is not None and ds not in DEEPSPEED_PRESETS and not os.path.isfile(ds):
        raise ConfigError(f"{where}: train.deepspeed: file {ds!r} does not exist")
    apply_vision_env(cfg.data)
    cls = _swift_class(kind)
    try:
        return cls(**kwargs)
    except (ValueError, AssertionError) as exc:
        raise ConfigError(
            f"{where}: ms-swift rejected the {cls.__name__} built from this config: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def swift_run_args(cfg: DistillConfig, kind: str) -> Any:
    """ms-swift's arguments for a run of ``cfg`` (``kind`` "sft" or "rlhf"), ready to train offline."""
    args = to_swift_args(cfg, kind=kind)
    # ms-swift asks the model hub whether a local checkpoint is the latest release; offline that costs
    # retries and time, and a local directory has nothing to check.
    args.check_model = False
    args.training_args.check_model = False
    return args
