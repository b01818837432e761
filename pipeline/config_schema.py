"""The typed schema of a distillation config: one documented dataclass per YAML section.

Every field carries its documentation in ``metadata["help"]`` (``config_reference()`` renders it
for the docs and the CLI). ``__post_init__`` checks what one section can check; ``DistillConfig``
checks the combinations. Messages name the dotted key and say what to change; the loader in
``pipeline.config`` prefixes the file that set the key. Field names mirror ms-swift 4.6's
argument names wherever a field is passed to ms-swift, so a reader can look them up there.

Imports nothing heavy: every stage reads this module, including ones that never train.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from pipeline.errors import ConfigError
from pipeline.variant import VARIANTS, TrainerVariant, trainer_variant

# Allowed values. Each tuple mirrors an ms-swift 4.6 choice list (tests compare them with the
# installed ms-swift), minus the values this pipeline cannot use.
TORCH_DTYPES = ("bfloat16", "float16", "float32")
ATTN_IMPLS = (
    "eager",
    "sdpa",
    "flash_attn",
    "flash_attention_2",
    "flash_attention_3",
    "flash_attention_4",
    "flex_attention",
)
# ms-swift also has "split", which only exists for pre-training (it splits one sample into several).
TRUNCATION_STRATEGIES = ("delete", "left", "right")
# ms-swift's built-in tuners (``swift.arguments.get_supported_tuners`` adds plugin tuners to these).
TUNER_TYPES = (
    "lora",
    "full",
    "longlora",
    "adalora",
    "llamapro",
    "adapter",
    "vera",
    "boft",
    "fourierft",
    "reft",
    "bone",
)
# Names ms-swift resolves to its own bundled DeepSpeed JSON files.
DEEPSPEED_PRESETS = ("zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload")
TRAINER_VARIANTS = tuple(VARIANTS)  # sft, gkd_monitor, gkd_cached
# pipeline.cache.format.LOGPROB_ENCODINGS (not imported: that module pulls in numpy and pyarrow).
LOGPROB_ENCODINGS = ("quantized", "fp32")
WRITTEN_MODES = ("off", "prompt_only", "all")  # custom.written_responses
WRITTEN_UNFINISHED = ("skip", "keep")  # custom.written_unfinished

# Environment variables that qwen_vl_utils reads for image sizes: owned by data.max_pixels/min_pixels.
PIXEL_ENV_VARS = ("MAX_PIXELS", "MIN_PIXELS", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM")


class ConfigFieldError(ConfigError):
    """A ``ConfigError`` about dotted keys (first = the one to fix). The loader adds the file name."""

    def __init__(self, keys: str | tuple[str, ...], message: str):
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        self.problem = message
        super().__init__(f"{self.keys[0]}: {message}")


class _Section:
    section: ClassVar[str] = ""

    def _fail(self, name: str, message: str, *also: str) -> None:
        raise ConfigFieldError((f"{self.section}.{name}", *also), message)

    def _choice(self, name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in allowed:
            self._fail(name, f"{value!r} is not one of {', '.join(allowed)}")

    def _positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            # `not value > 0` also refuses NaN; .inf is refused too: no setting here means "unbounded".
            if not value > 0 or not math.isfinite(value):
                self._fail(name, f"must be a finite number > 0, got {value}")

    def _finite_at_least(self, name: str, low: float, why: str) -> None:
        value = getattr(self, name)
        # `not value >= low` also refuses NaN; .inf means nothing sensible for any of these knobs.
        if not value >= low or not math.isfinite(value):
            self._fail(name, f"must be a finite number >= {low!r} ({why}), got {value}")

    def _in_unit_interval(self, name: str, why: str) -> None:
        value = getattr(self, name)
        if not 0.0 <= value <= 1.0:
            self._fail(name, f"must be in [0, 1] ({why}), got {value}")


@dataclass(kw_only=True)
class ModelConfig(_Section):
    """The student model and how ms-swift loads and formats it."""

    section: ClassVar[str] = "model"
    model: str = field(
        metadata={
            "help": "Student model: a local checkpoint directory or a hub id (ms-swift `--model`). Not "
            "checked when the config loads, only when a run starts."
        }
    )
    model_type: str = field(
        metadata={
            "help": "ms-swift model type, e.g. `qwen2_5_vl` (`--model_type`). Explicit, so a local directory"
            " never depends on ms-swift guessing it from the name."
        }
    )
    template: str = field(
        metadata={
            "help": "ms-swift chat template of the student, e.g. `qwen2_5_vl` (`--template`). Caching and "
            "training encode rows with it; it is part of the cache fingerprint."
        }
    )
    torch_dtype: str = field(
        default="bfloat16",
        metadata={
            "help": "Weight dtype: bfloat16, float16 or float32. Also sets mixed precision: bfloat16 -> "
            "bf16, float16 -> fp16, float32 -> none (ms-swift alone would turn on fp16 for float32; "
            "set train.extra.bf16/fp16 to override)."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow the student's directory (and its checkpoints and init) to run Python it ships "
            "(an `auto_map` in config.json, `modeling_*.py`). Off: such a directory is refused before "
            "anything loads it. Qwen2.5-VL and Qwen3-VL need no shipped code."
        },
    )
    attn_impl: str | None = field(
        default=None,
        metadata={
            "help": "Attention kernel (`--attn_impl`): sdpa, eager, flash_attn, ... None lets ms-swift "
            "choose between sdpa and eager."
        },
    )

    def __post_init__(self) -> None:
        for name in ("model", "model_type", "template"):
            if not getattr(self, name).strip():
                self._fail(name, "must not be empty")
        self._choice("torch_dtype", TORCH_DTYPES)
        if self.attn_impl is not None:
            self._choice("attn_impl", ATTN_IMPLS)


@dataclass(kw_only=True)
class DataConfig(_Section):
    """Datasets and every setting that shapes encoding (all of it goes into the cache fingerprint)."""

    section: ClassVar[str] = "data"
    dataset: list[str] = field(
        metadata={
            "help": "Training data: jsonl files of rows with `messages` (and `images`), or ms-swift dataset "
            "specs `id_or_path[:subset][#count]`. Relative paths are relative to the working "
            "directory (the repository root under DVC), not to this file."
        }
    )
    val_dataset: list[str] = field(
        default_factory=list,
        metadata={"help": "Validation data, same forms as `dataset`. Empty: no evaluation."},
    )
    max_length: int = field(
        default=2048,
        metadata={"help": "Maximum tokens per encoded sample, image tokens included (`--max_length`)."},
    )
    truncation_strategy: str = field(
        default="delete",
        metadata={
            "help": "What to do with a longer sample: `delete` drops it (recorded as skipped), "
            "`left`/`right` cut tokens from that side (a cut that removes supervised tokens is "
            "refused). ms-swift's `split` is for pre-training only and is not accepted."
        },
    )
    max_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Upper bound on an image's height*width: larger images are scaled down, keeping the "
            "aspect ratio, before the processor sees them. Passed as ms-swift's template argument "
            "`--max_pixels` (stored on the template object, so it holds in every dataloader worker)."
            " For Qwen-VL, qwen_vl_utils then rounds each side to a multiple of 28 (patch 14 x merge"
            " 2), which can land up to a few percent above this bound. 1003520 = 1280*28*28, i.e. "
            "about 1280 visual tokens. None: no limit beyond qwen_vl_utils' own (16384 tokens)."
        },
    )
    min_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Lower bound on an image's height*width: qwen_vl_utils scales smaller images up. "
            "ms-swift has no argument for it; it is passed as the environment variable MIN_PIXELS "
            "(via `--model_kwargs`), which only the qwen_vl_utils model families (Qwen2-VL, "
            "Qwen2.5-VL, Qwen3-VL, Qwen-Omni) read, once per process, when the first processor "
            "loads. None: qwen_vl_utils' default (4 tokens, 3136 px for Qwen2.5-VL)."
        },
    )
    system: str | None = field(
        default=None,
        metadata={
            "help": "System prompt that replaces the template's default (`--system`). None keeps the "
            "template's default. Write the text itself, not a .txt path."
        },
    )
    loss_scale: str = field(
        default="default",
        metadata={
            "help": "Which tokens are supervised (`--loss_scale`): `default` = every assistant turn, "
            "`last_round` = the last one. Always passed explicitly: ms-swift's RLHF arguments "
            "default to `last_round` for GKD, its SFT arguments to `default`, and caching and "
            "training must agree."
        },
    )
    dataloader_num_workers: int = field(
        default=0,
        metadata={"help": "Dataloader worker processes for training (0 = load in the main process)."},
    )

    def __post_init__(self) -> None:
        if not self.dataset:
            self._fail("dataset", "needs at least one training dataset, e.g. [data/prepared/train.jsonl]")
        for name in ("dataset", "val_dataset"):
            for i, item in enumerate(getattr(self, name)):
                if not item.strip():
                    self._fail(f"{name}[{i}]", "must not be empty")
        self._positive("max_length")
        self._choice("truncation_strategy", TRUNCATION_STRATEGIES)
        for name in ("max_pixels", "min_pixels"):
            if getattr(self, name) is not None:
                self._positive(name)
        if self.max_pixels is not None and self.min_pixels is not None and self.min_pixels > self.max_pixels:
            self._fail(
                "min_pixels",
                f"{self.min_pixels} is above data.max_pixels {self.max_pixels}; lower it",
                "data.max_pixels",
            )
        if self.system is not None and (self.system.endswith(".txt") or "\\n" in self.system):
            # ms-swift's argument parsing reads a .txt path and turns a literal backslash-n into a newline;
            # the cache stage's encoder takes the string as it is. Only plain text means the same to both.
            self._fail(
                "system",
                "write the prompt text itself, with real newlines (a YAML `|` block), not a "
                ".txt path or literal '\\n' (ms-swift's CLI would rewrite those, the cache encoder not)",
            )
        if not self.loss_scale.strip():
            self._fail("loss_scale", "must not be empty; `default` supervises every assistant turn")
        if self.dataloader_num_workers < 0:
            self._fail("dataloader_num_workers", f"must be >= 0, got {self.dataloader_num_workers}")


@dataclass(kw_only=True)
class TrainConfig(_Section):
    """Optimisation and checkpointing: ms-swift's training arguments, under the same names."""

    section: ClassVar[str] = "train"
    tuner_type: str = field(
        default="lora",
        metadata={"help": "`lora` or `full` (ms-swift 4.x `--tuner_type`; 3.x called it `--train_type`)."},
    )
    output_dir: str = field(
        default="runs/student",
        metadata={
            "help": "Run directory (checkpoints, logs). Used as is: no version suffix is added (see "
            "add_version), so DVC can name it as an output."
        },
    )
    learning_rate: float = field(
        metadata={"help": "Peak learning rate. Typical: 1e-4 for LoRA, 1e-5 for full tuning."}
    )
    num_train_epochs: float = field(
        metadata={"help": "Epochs over `data.dataset`; ignored when max_steps > 0."}
    )
    max_steps: int = field(default=-1, metadata={"help": "Total optimizer steps; -1 = use num_train_epochs."})
    per_device_train_batch_size: int = field(
        default=1, metadata={"help": "Samples per device per micro-step."}
    )
    per_device_eval_batch_size: int = field(
        default=1, metadata={"help": "Samples per device per evaluation step."}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-steps per optimizer step."})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r (tuner_type lora)."})
    lora_alpha: float = field(
        default=32.0, metadata={"help": "LoRA alpha; the update is scaled by alpha / r."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={
            "help": "Modules that get LoRA: `all-linear` = every linear layer of the parts not frozen by "
            "freeze_vit/freeze_aligner/freeze_llm."
        },
    )
    freeze_vit: bool = field(
        default=True, metadata={"help": "Freeze the vision tower (full tuning) / add no LoRA there (LoRA)."}
    )
    freeze_aligner: bool = field(
        default=True, metadata={"help": "Freeze the vision-language merger (projector) / add no LoRA there."}
    )
    freeze_llm: bool = field(
        default=False, metadata={"help": "Freeze the language model / add no LoRA there."}
    )
    seed: int = field(
        default=42,
        metadata={"help": "Random seed of the training run (ms-swift's data_seed stays separate)."},
    )
    logging_steps: int = field(default=5, metadata={"help": "Log every this many optimizer steps."})
    eval_steps: int | None = field(
        default=None,
        metadata={
            "help": "Evaluate every this many steps; None = at every save (save_steps). Needs "
            "data.val_dataset."
        },
    )
    save_steps: int = field(default=500, metadata={"help": "Save a checkpoint every this many steps."})
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Keep at most this many checkpoints (None = all)."}
    )
    warmup_ratio: float = field(
        default=0.05, metadata={"help": "Fraction of the steps spent warming the learning rate up."}
    )
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": "transformers scheduler name: cosine, linear, constant, ..."}
    )
    gradient_checkpointing: bool = field(
        default=True, metadata={"help": "Recompute activations in backward to save memory."}
    )
    deepspeed: str | None = field(
        default=None,
        metadata={
            "help": "DeepSpeed config: a JSON path (configs/deepspeed/zero2.json) or an ms-swift preset "
            "(zero0..zero3, zero2_offload, zero3_offload). None: no DeepSpeed."
        },
    )
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"],
        metadata={"help": "Experiment trackers for transformers' callbacks (`none` for none)."},
    )
    add_version: bool = field(
        default=False,
        metadata={
            "help": "Let ms-swift append `/v<N>-<timestamp>` to output_dir. Off: DVC outputs need a fixed "
            "path."
        },
    )
    extra: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Any other ms-swift SftArguments field, passed through unchanged (e.g. `vit_lr`, "
            "`aligner_lr`, `save_only_model`): every variant trains on ms-swift's SFT trainer, and the GKD "
            "settings live in the rlhf: block. Keys that one of our fields owns are "
            "refused here; the others are checked against ms-swift's dataclass when the arguments "
            "are built."
        },
    )

    def __post_init__(self) -> None:
        self._choice("tuner_type", TUNER_TYPES)
        if not self.output_dir.strip():
            self._fail("output_dir", "must not be empty")
        self._positive(
            "learning_rate",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "lora_rank",
            "lora_alpha",
            "logging_steps",
            "save_steps",
        )
        if self.max_steps == 0 or self.max_steps < -1:
            self._fail("max_steps", f"must be -1 (use num_train_epochs) or > 0, got {self.max_steps}")
        if not math.isfinite(self.num_train_epochs):  # refused even when max_steps makes it unused
            self._fail("num_train_epochs", f"must be a finite number, got {self.num_train_epochs}")
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            self._fail("num_train_epochs", f"must be > 0 when max_steps is -1, got {self.num_train_epochs}")
        if not 0 <= self.seed < 2**32:  # numpy's seed range (transformers seeds numpy with it)
            self._fail("seed", f"must be in [0, {2**32 - 1}], got {self.seed}")
        for name in ("eval_steps", "save_total_limit"):
            if getattr(self, name) is not None:
                self._positive(name)
        if not 0.0 <= self.lora_dropout < 1.0:
            self._fail("lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        self._in_unit_interval("warmup_ratio", "a fraction of the steps")
        self._finite_at_least("weight_decay", 0, "0 = none")
        if not self.target_modules:
            self._fail("target_modules", "must name at least one module, e.g. [all-linear]")
        if self.freeze_vit and self.freeze_aligner and self.freeze_llm:
            self._fail(
                "freeze_llm",
                "with freeze_vit and freeze_aligner also true nothing is trained; set one of them to false",
            )
        if self.deepspeed is not None and not (
            self.deepspeed in DEEPSPEED_PRESETS or self.deepspeed.endswith(".json")
        ):
            self._fail(
                "deepspeed",
                f"{self.deepspeed!r} is neither a .json path nor one of {', '.join(DEEPSPEED_PRESETS)}",
            )
        if "none" in self.report_to and len(self.report_to) > 1:
            self._fail("report_to", f"`none` cannot be combined with other trackers: {self.report_to}")
        for key, value in self.extra.items():
            if key in SWIFT_NAMES_SET_BY_CONFIG:
                self._fail(f"extra.{key}", f"set {SWIFT_NAMES_SET_BY_CONFIG[key]} instead")
            if key == "model_kwargs":
                owned = sorted(set(value or {}) & set(PIXEL_ENV_VARS)) if isinstance(value, dict) else []
                if owned:
                    self._fail(
                        "extra.model_kwargs",
                        f"{owned} set image sizes: use data.max_pixels / data.min_pixels instead",
                    )


@dataclass(kw_only=True)
class RlhfConfig(_Section):
    """ms-swift's GKD arguments (`swift rlhf --rlhf_type gkd`), under ms-swift's names."""

    section: ClassVar[str] = "rlhf"
    rlhf_type: str = field(default="gkd", metadata={"help": "Only `gkd` is supported."})
    teacher_model: str | None = field(
        default=None,
        metadata={
            "help": "Teacher checkpoint directory or hub id. Needed by gkd_monitor, and by gkd_cached when "
            "lmbda > 0 (the live teacher scores the student's own samples); the cache stage always "
            "reads it. Offline gkd_cached training does not pass it to ms-swift (which would load "
            "it). Not checked when the config loads."
        },
    )
    teacher_model_type: str | None = field(
        default=None,
        metadata={"help": "ms-swift model type of the teacher (None: same detection as ms-swift)."},
    )
    beta: float = field(
        default=0.5,
        metadata={
            "help": "Generalized JSD interpolation: 0 = forward KL(teacher||student), 1 = reverse "
            "KL(student||teacher), 0.5 = symmetric JSD."
        },
    )
    sft_alpha: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the cross-entropy term on dataset batches: loss = JSD + sft_alpha * CE."
        },
    )
    lmbda: float = field(
        default=0.0,
        metadata={
            "help": "Probability that a batch is on-policy (the student samples its own response and the "
            "live teacher scores it). 0 = fully offline. ms-swift's default is 0.5; ours is 0."
        },
    )
    seq_kd: bool = field(
        default=False,
        metadata={
            "help": "Sequence-level KD (train on teacher-generated responses). Not supported: it needs "
            "teacher generation, which the cache cannot provide. Must stay false."
        },
    )
    temperature: float = field(
        default=0.9,
        metadata={
            "help": "ON-POLICY SAMPLING temperature of the student (ms-swift's name). Not the loss "
            "temperature: that is custom.loss_temperature. Note: ms-swift's own GKD loss divides "
            "logits by this same value."
        },
    )
    max_completion_length: int = field(
        default=256, metadata={"help": "Longest response the student samples on on-policy batches."}
    )

    def __post_init__(self) -> None:
        if self.rlhf_type != "gkd":
            self._fail("rlhf_type", f"{self.rlhf_type!r} is not supported; this pipeline only runs `gkd`")
        self._in_unit_interval("beta", "0 = forward KL, 1 = reverse KL")
        self._in_unit_interval("lmbda", "the on-policy fraction")
        self._finite_at_least("sft_alpha", 0, "0 = no cross-entropy term")
        if self.seq_kd:
            self._fail(
                "seq_kd",
                "sequence-level KD is not supported (it would need teacher generation, which "
                "the cache cannot replace); set it to false",
            )
        self._positive("temperature", "max_completion_length")
        for name in ("teacher_model", "teacher_model_type"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                self._fail(name, "must not be empty; remove the key (or write null) instead")


@dataclass(kw_only=True)
class CustomConfig(_Section):
    """Settings of ours that ms-swift has no name for: the trainer variant and the teacher cache."""

    section: ClassVar[str] = "custom"
    trainer_variant: str = field(
        default="sft",
        metadata={
            "help": "`sft` (cross-entropy only), `gkd_monitor` (GKD against a live teacher), or `gkd_cached`"
            " (teacher distributions read from custom.teacher_cache; the live teacher only serves "
            "on-policy batches, lmbda > 0)."
        },
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={
            "help": "Directory of the teacher cache (written by the cache stage, read by gkd_cached training"
            " and evaluation)."
        },
    )
    loss_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Temperature of the KD loss (teacher and student logits divided by it). Fixed when the "
            "cache is written and recorded in its fingerprint: training against a cache built at "
            "another temperature is an error."
        },
    )
    caption_metric: str | None = field(
        default=None,
        metadata={
            "help": "Extra caption metric for `distill evaluate`, as `module:function` taking (rows, "
            "generated texts) and returning a dict of scores (e.g. the demo's object F1, "
            "`pipeline.demo.caption_metric:object_metrics`). BLEU-4, ROUGE-L and CIDEr against each "
            "row's reference response are always reported."
        },
    )
    top_k: int = field(
        default=64,
        metadata={
            "help": "Teacher ids kept per supervised token in the cache; the rest of the mass is one tail "
            "bucket."
        },
    )
    logprob_encoding: str = field(
        default="quantized",
        metadata={
            "help": "How cached log-probs are stored: `quantized` (compact, tuned for a small KL error) "
            "or `fp32`."
        },
    )
    cache_shard_mb: float | None = field(
        default=None,
        metadata={"help": "Roll cache shards at about this many MiB. None: the cache writer's default."},
    )
    cache_batch_size: int = field(
        default=8, metadata={"help": "Rows per teacher forward in the cache stage."}
    )
    strict: bool = field(
        default=False,
        metadata={
            "help": "Fail on the first unusable row instead of skipping it and recording why (also "
            "ms-swift's `--strict`; `distill cache --strict` sets it)."
        },
    )
    encoded_cache_mb: float = field(
        default=1024.0,
        metadata={
            "help": "Training keeps the rows' encodings (token ids, labels, image pixels) it has made, up "
            "to this many MiB per dataloader process, so later epochs skip the template and the image "
            "decode; past the budget the other rows are encoded on every access. 0 encodes on every "
            "access. A kept encoding is still checked against its cache row on every access."
        },
    )
    allow_partial_cache: bool = field(
        default=False,
        metadata={
            "help": "Let gkd_cached training use a cache that covers only part of the dataset (rows "
            "neither cached nor recorded as skipped, e.g. after `distill cache --limit`). Off: such a "
            "cache is refused."
        },
    )
    max_skipped_fraction: float = field(
        default=0.05,
        metadata={
            "help": "Largest fraction of a training split's rows that may be left out as unusable "
            "(skipped by the cache stage, or failing the image/response check before SFT training); "
            "training refuses to start above it."
        },
    )

    written_responses: str = field(
        default="off",
        metadata={
            "help": "Teacher-written responses in the cache (offline sequence-level KD): `off` (a row "
            "without an assistant response is skipped as prompt_only_in_labelled_split), `prompt_only` "
            "(the teacher writes the response of rows that have only a prompt, e.g. unlabelled images), "
            "`all` (the teacher rewrites every row's response). Part of the cache fingerprint."
        },
    )
    teacher_trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow the teacher's directory to run Python it ships (an `auto_map` in config.json, "
            "`modeling_*.py`). Off: such a teacher is refused before anything loads it (ms-swift's loader "
            "would execute it unconditionally)."
        },
    )
    written_temperature: float = field(
        default=0.0,
        metadata={"help": "Sampling temperature of teacher-written responses; 0 = greedy (fingerprinted)."},
    )
    written_seed: int = field(
        default=0, metadata={"help": "Seed of sampled teacher-written responses (fingerprinted)."}
    )
    written_max_new_tokens: int = field(
        default=128,
        metadata={
            "help": "Most tokens the teacher writes per response, stop token included (fingerprinted)."
        },
    )
    written_unfinished: str = field(
        default="skip",
        metadata={
            "help": "A teacher-written response that hits written_max_new_tokens without its end-of-turn: "
            "`skip` the row (counted as written_unfinished) or `keep` it as written (fingerprinted)."
        },
    )
    written_by: str = field(
        default="teacher",
        metadata={
            "help": "Who writes the responses of custom.written_responses: `teacher` (offline sequence-level"
            " KD), or the path of a student checkpoint directory (an on-policy round: the student writes, "
            "the teacher scores its tokens). The student samples with written_temperature, written_seed "
            "and written_max_new_tokens (set them to rlhf.temperature and rlhf.max_completion_length for "
            "on-policy rounds); it is loaded, writes, and is released before the teacher loads. Its weights"
            " digest and written_round go into each written row's key: another writer or round re-writes "
            "the rows (a new generation), an unchanged one reuses them."
        },
    )
    written_round: str = field(
        default="",
        metadata={
            "help": "Label of a student-written round (e.g. `r1`): part of each written row's key and of "
            "its sampling seed, so a new round with the same checkpoint draws fresh samples. Recorded "
            "with the generation. Ignored when written_by is `teacher`."
        },
    )
    onpolicy_cache: str | None = field(
        default=None,
        metadata={
            "help": "gkd_cached with lmbda > 0: on-policy batches come from this cache split directory "
            "(e.g. `cache_r1/train`, written by `distill cache` with written_by a student checkpoint) "
            "instead of live sampling: the teacher is not loaded in training, CE is not applied to these "
            "student-written rows. Needs custom.onpolicy_dataset. None: live on-policy sampling."
        },
    )
    onpolicy_dataset: str | None = field(
        default=None,
        metadata={
            "help": "The JSONL whose rows custom.onpolicy_cache was written for (the prompts and images "
            "the student wrote responses to); only its student-written rows are drawn."
        },
    )

    @property
    def variant(self) -> TrainerVariant:
        """``trainer_variant`` as its ``TrainerVariant`` (what it reads, when it needs the teacher)."""
        return trainer_variant(self.trainer_variant)

    def __post_init__(self) -> None:
        self._choice("trainer_variant", TRAINER_VARIANTS)
        self._in_unit_interval("max_skipped_fraction", "a fraction of the split's rows")
        self._choice("written_responses", WRITTEN_MODES)
        self._choice("written_unfinished", WRITTEN_UNFINISHED)
        self._positive("written_max_new_tokens")
        self._finite_at_least("written_temperature", 0, "0 = greedy")
        self._choice("logprob_encoding", LOGPROB_ENCODINGS)
        self._positive("loss_temperature", "top_k", "cache_batch_size")
        if self.cache_shard_mb is not None:
            # A budget under 1 KiB rounds to no bytes at all: every row would be a shard of its own.
            self._finite_at_least("cache_shard_mb", 1 / 1024, "a shard's byte budget in MiB; 1/1024 = 1 KiB")
        self._finite_at_least("encoded_cache_mb", 0, "0 turns it off")
        if self.teacher_cache is not None and not self.teacher_cache.strip():
            self._fail("teacher_cache", "must not be empty; remove the key (or write null) instead")
        for name in ("onpolicy_cache", "onpolicy_dataset"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                self._fail(name, "must not be empty; remove the key (or write null) instead")
        if (self.onpolicy_cache is None) != (self.onpolicy_dataset is None):
            self._fail(
                "onpolicy_cache" if self.onpolicy_cache is None else "onpolicy_dataset",
                "custom.onpolicy_cache and custom.onpolicy_dataset go together: set both or neither",
            )
        if not self.written_by.strip():
            self._fail("written_by", "`teacher` or the path of a student checkpoint directory")
        if self.written_by != "teacher" and self.written_responses == "off":
            self._fail(
                "written_by",
                f"{self.written_by!r} writes nothing while custom.written_responses is `off`: set it to "
                "`prompt_only` or `all`",
            )


@dataclass(kw_only=True)
class DistillConfig:
    """A whole run: the sections above, checked together. Build it with ``pipeline.config.load_config``."""

    model: ModelConfig = field(metadata={"help": "The student model."})
    data: DataConfig = field(metadata={"help": "Datasets and encoding settings."})
    train: TrainConfig = field(metadata={"help": "Optimisation and checkpointing."})
    rlhf: RlhfConfig | None = field(
        default=None, metadata={"help": "GKD arguments; absent (or null) for plain SFT."}
    )
    custom: CustomConfig = field(
        default_factory=CustomConfig, metadata={"help": "Trainer variant and teacher cache."}
    )
    source_files: list[str] = field(
        default_factory=list,
        metadata={
            "help": "The inheritance chain that produced this config, child last (filled by the loader, not "
            "a YAML key)."
        },
    )

    def __post_init__(self) -> None:
        variant, rlhf = self.custom.variant, self.rlhf
        if self.custom.onpolicy_cache is not None and not variant.reads_cache:
            raise ConfigFieldError(
                ("custom.onpolicy_cache", "custom.trainer_variant"),
                f"{variant} does not read a teacher cache: on-policy batches through the cache need "
                "custom.trainer_variant: gkd_cached",
            )
        if not variant.distils:
            if rlhf is not None:
                raise ConfigFieldError(
                    ("rlhf", "custom.trainer_variant"),
                    "an rlhf: block needs a GKD trainer: set custom.trainer_variant to gkd_cached or "
                    "gkd_monitor, or drop the block (`rlhf: null` in a child config)",
                )
            return
        if rlhf is None:
            raise ConfigFieldError(
                "custom.trainer_variant",
                f"{variant} needs an rlhf: block (rlhf_type: gkd, teacher_model, beta, sft_alpha, lmbda, ...)",
            )
        if variant.live_every_batch and rlhf.teacher_model is None:
            raise ConfigFieldError(
                ("rlhf.teacher_model", "custom.trainer_variant"),
                f"{variant} scores every batch with the live teacher: set rlhf.teacher_model "
                "(ms-swift would otherwise silently distil the student into itself)",
            )
        if variant.reads_cache:
            if self.custom.teacher_cache is None:
                raise ConfigFieldError(
                    ("custom.teacher_cache", "custom.trainer_variant"),
                    f"{variant} reads the teacher from a cache: set custom.teacher_cache to its directory",
                )
            if self.custom.onpolicy_cache is not None and rlhf.lmbda <= 0:
                raise ConfigFieldError(
                    ("custom.onpolicy_cache", "rlhf.lmbda"),
                    "custom.onpolicy_cache serves on-policy batches, and rlhf.lmbda is 0: set rlhf.lmbda "
                    "> 0 (the fraction of steps drawn from it), or remove custom.onpolicy_cache",
                )
            if rlhf.lmbda > 0 and rlhf.teacher_model is None and self.custom.onpolicy_cache is None:
                raise ConfigFieldError(
                    ("rlhf.teacher_model", "rlhf.lmbda"),
                    f"rlhf.lmbda = {rlhf.lmbda} sends on-policy batches to the live teacher: set "
                    "rlhf.teacher_model, set custom.onpolicy_cache to a student-written cache, or set "
                    "rlhf.lmbda to 0 for fully offline training",
                )

    @property
    def config_path(self) -> str | None:
        """The file this config was loaded from (the child of the chain)."""
        return self.source_files[-1] if self.source_files else None


SECTIONS: dict[str, type[_Section]] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "rlhf": RlhfConfig,
    "custom": CustomConfig,
}


# ms-swift argument name -> the key of ours that sets it (same name in both, except where noted).
# ``train.extra`` may not set these: one value, one place. bf16/fp16 are derived from
# model.torch_dtype but may be set in extra.
SWIFT_NAMES_SET_BY_CONFIG: dict[str, str] = {
    f.name: f"{section}.{f.name}"
    for section, cls in SECTIONS.items()
    if section != "custom"
    for f in fields(cls)  # type: ignore[arg-type]
    # min_pixels travels as the MIN_PIXELS env var; ms-swift has no trust_remote_code argument (its
    # loader always trusts), so ours is checked before ms-swift sees the model.
    if f.name not in ("min_pixels", "extra", "trust_remote_code")
}
SWIFT_NAMES_SET_BY_CONFIG.update(
    {
        "strict": "custom.strict",
        # Old or alias spellings of the above.
        "train_type": "train.tuner_type (ms-swift 4.x renamed --train_type to --tuner_type)",
        "max_new_tokens": "rlhf.max_completion_length (ms-swift's compatibility alias)",
        "response_length": "rlhf.max_completion_length (ms-swift's compatibility alias)",
    }
)


def config_reference() -> str:
    """Markdown reference of every config key with its default and documentation."""
    lines = []
    for name, cls in SECTIONS.items():
        lines += [
            f"## `{name}:`",
            "",
            (cls.__doc__ or "").strip(),
            "",
            "| key | default | meaning |",
            "| --- | --- | --- |",
        ]
        for f in fields(cls):  # type: ignore[arg-type]
            if f.default is not MISSING:
                default = repr(f.default)
            elif f.default_factory is not MISSING:
                default = repr(f.default_factory())
            else:
                default = "required"
            text = f.metadata["help"].replace("|", "\\|")  # KL(p||q) must not split the table cell
            lines.append(f"| `{f.name}` | `{default}` | {text} |")
        lines.append("")
    return "\n".join(lines)
