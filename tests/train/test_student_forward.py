"""Student forward for the fused loss: head resolution, LoRA-head refusal and ZeRO-3 gathering."""

from __future__ import annotations

import contextlib
import sys
import types
from enum import Enum
from typing import Any

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.train.student_forward import head_gather, is_partitioned, output_head, unwrap


class _Status(Enum):  # DeepSpeed's ZeroParamStatus members, by name
    AVAILABLE = 1
    NOT_AVAILABLE = 2
    INFLIGHT = 3


def _ds_param(status: _Status | None) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros(3))
    if status is not None:
        p.ds_id = 7  # type: ignore[attr-defined]
        p.ds_status = status  # type: ignore[attr-defined]
    return p


class _TinyLM(torch.nn.Module):
    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.lm_head = head

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head


def test_partitioned_means_a_zero3_param_not_available_here() -> None:
    assert not is_partitioned(_ds_param(None))  # a plain parameter
    assert not is_partitioned(_ds_param(_Status.AVAILABLE))  # gathered already (inside its module)
    assert is_partitioned(_ds_param(_Status.NOT_AVAILABLE))
    assert is_partitioned(_ds_param(_Status.INFLIGHT))


def test_gather_calls_deepspeed_only_for_partitioned_params(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[Any], Any]] = []

    @contextlib.contextmanager
    def gathered(params: list[Any], modifier_rank: Any = "unset") -> Any:
        calls.append((list(params), modifier_rank))
        yield

    fake = types.ModuleType("deepspeed")
    fake.zero = types.SimpleNamespace(GatheredParameters=gathered)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    w, b = _ds_param(_Status.NOT_AVAILABLE), _ds_param(_Status.AVAILABLE)
    with head_gather([w, b, None])():
        pass
    assert len(calls) == 1 and calls[0][0] == [w] and calls[0][1] is None  # read-only gather
    with head_gather([_ds_param(None), None])():  # nothing partitioned: deepspeed is not touched
        pass
    assert len(calls) == 1
    # the decision is taken at entry: the same factory gathers again once the param is released
    enter = head_gather([b])
    with enter():
        pass
    b.ds_status = _Status.NOT_AVAILABLE  # type: ignore[attr-defined]
    with enter():
        pass
    assert len(calls) == 2 and calls[1][0] == [b]


def test_output_head_tied_untied_and_wrapped() -> None:
    head = torch.nn.Linear(4, 10, bias=False)
    lm = _TinyLM(head)
    assert output_head(lm) == (head.weight, None)
    lm.lm_head.weight = lm.embed.weight  # tied
    assert output_head(lm)[0] is lm.embed.weight
    wrapped = torch.nn.Module()
    wrapped.module = lm  # DDP / DeepSpeed engine style
    assert unwrap(wrapped) is lm and output_head(wrapped)[0] is lm.embed.weight


def test_lora_adapted_head_is_refused_and_modules_to_save_works() -> None:
    from peft import LoraConfig, get_peft_model

    class Cfg(dict):  # the minimum peft reads from a model config
        model_type = "tiny"
        tie_word_embeddings = False

        def to_dict(self) -> dict[str, Any]:
            return {}

    lm = _TinyLM(torch.nn.Linear(4, 10))
    lm.config = Cfg()
    lora = get_peft_model(lm, LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(ConfigError, match="lm_head"):
        output_head(lora)

    lm2 = _TinyLM(torch.nn.Linear(4, 10))
    lm2.config = Cfg()
    lm2.proj = torch.nn.Linear(4, 4)
    saved = get_peft_model(lm2, LoraConfig(r=2, target_modules=["proj"], modules_to_save=["lm_head"]))
    weight, bias = output_head(saved)
    trained = saved.base_model.model.lm_head.modules_to_save["default"]
    assert weight is trained.weight and bias is trained.bias and weight.requires_grad
