"""On-policy batches (``lmbda``): the student writes its own completions, the live teacher scores them.

The whole batch's prompts are completed in one call of the shared generation loop
(``pipeline.generation``: left padding, one KV cache, stop at the template's end-of-turn) at the
on-policy SAMPLING temperature, up to ``max_completion_length`` tokens. Each row's prompt plus its
decoded completion is encoded again by the shared ``RowEncoder`` in training mode, so the labels
cover exactly the sampled tokens (and the end-of-turn token). CE is not applied to these batches.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.data import Row
from pipeline.generation import SamplingSettings, generate, with_response

# A completion that decodes to nothing still needs one supervised token besides the end-of-turn.
EMPTY_COMPLETION = "."


def sample_completions(trainer: Any, model: Any, rows: list[Row]) -> dict[str, Any]:
    """Collated training inputs (on the trainer's device) of the rows' prompts + student completions.

    Returns the template collator's dict (``input_ids``/``labels`` [B, L], pixel tensors, ...).
    Sampling uses the global RNG, which the trainer seeds once, so runs are reproducible.
    """
    encoder = trainer.encoder
    cfg = trainer.distill
    settings = SamplingSettings(
        max_new_tokens=cfg.max_completion_length,
        temperature=cfg.sampling_temperature,
        batch_size=max(len(rows), 1),
    )
    completions = generate(model, encoder, rows, settings)
    encoded = [
        encoder.encode(with_response(row, c.text or EMPTY_COMPLETION), check=False).inputs
        for row, c in zip(rows, completions, strict=True)
    ]
    batch = encoder.template.data_collator(encoded)
    device = trainer.args.device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
