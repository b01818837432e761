"""On-policy batches (``lmbda``): the student writes its own completion, the live teacher scores it.

Each row's prompt (its messages without the final assistant turn) is encoded by the shared template,
the student samples up to ``max_completion_length`` tokens at the on-policy SAMPLING temperature, and
the prompt plus the decoded completion is encoded again in training mode, so the labels cover exactly
the sampled tokens (and the end-of-turn token). CE is not applied to these batches.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from pipeline.data import Row


def _prompt_inputs(template: Any, row: Row) -> dict[str, Any]:
    msgs = [dict(m) for m in row.messages]
    if msgs and msgs[-1].get("role") == "assistant":
        msgs = msgs[:-1]
    saved = template.mode
    template.set_mode("pt")  # prompt + generation prefix, no labels
    try:
        return template.encode(
            {"messages": msgs, "images": list(row.images)} if row.images else {"messages": msgs}
        )
    finally:
        template.set_mode(saved)


@torch.no_grad()
def generate_completion(model: Any, template: Any, row: Row, max_new_tokens: int, temperature: float) -> str:
    """Sample one completion for ``row``'s prompt with the student; returns decoded text."""
    enc = _prompt_inputs(template, row)
    batch = template.data_collator([enc])
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    gen_inputs = {
        k: v
        for k, v in batch.items()
        if k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
    }
    tok = template.tokenizer
    stop_ids = [
        i
        for i in (tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id)
        if isinstance(i, int) and i >= 0
    ]
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            **gen_inputs,
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_k=None,
            top_p=None,
            eos_token_id=stop_ids,
            pad_token_id=tok.pad_token_id,
        )
    finally:
        model.train(was_training)
    new = out[0, batch["input_ids"].shape[1] :].tolist()
    return str(tok.decode(new, skip_special_tokens=True)).strip()


def sample_completions(trainer: Any, model: Any, rows: list[Row]) -> dict[str, Any]:
    """Collated training inputs (on the trainer's device) of the rows' prompts + student completions."""
    template = trainer.template
    cfg = trainer.distill
    encoded = []
    for row in rows:
        text = generate_completion(model, template, row, cfg.max_completion_length, cfg.sampling_temperature)
        msgs = [dict(m) for m in row.messages]
        if msgs and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        msgs.append({"role": "assistant", "content": text or "."})
        new_row = replace(row, messages=msgs)
        encoded.append(template.encode(new_row.swift_inputs()))
    batch = template.data_collator(encoded)
    device = trainer.args.device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
