"""One student training step through the fused head + loss, with or without DeepSpeed ZeRO-3 (CPU).

Run under ``torchrun --nproc_per_node 2 -m tests.train.zero3_step OUT tied|untied`` it wraps the tiny
demo student (the demo ties its head to the embeddings; ``untied`` gives it a separate head) in a
ZeRO-3 engine over gloo with every parameter partitioned, gives each rank two micro-batches of its
own (two image + caption rows each, a cached-teacher-like top-k + tail target), accumulates them into
one ``engine.step`` (plain SGD) and has rank 0 ``torch.save`` to ``OUT``: ``loss`` (``[world, micro]``), ``grad`` and ``param`` (name -> the
full gradient before the step / the full parameter after it, gathered from the partitions) and
``head_gathers`` (per micro-batch of rank 0: how often the head was gathered in forward, in backward).
``reference_step`` does the same step in one process without DeepSpeed, for ``test_zero3_cpu.py``.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import torch

LR = 0.5
BETA = 0.5
TOP_K = 8
CHUNK, BLOCK = 5, 100  # several row chunks and vocabulary blocks per step (vocabulary: 422 ids)
WORLD, GAS = 2, 2  # ranks, micro-batches per optimizer step (the second accumulates)
MICRO_BATCHES = [(r, m) for r in range(WORLD) for m in range(GAS)]
DS_CONFIG: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": GAS,
    "zero_optimization": {
        "stage": 3,
        # partition every parameter (the default keeps those under 1e5 elements whole on each rank,
        # which would leave the demo's 422 x 64 head unpartitioned)
        "stage3_param_persistence_threshold": 0,
    },
    "zero_allow_untested_optimizer": True,  # the client optimizer below is torch.optim.SGD
    "gradient_clipping": 0.0,
    "fp16": {"enabled": False},
    "bf16": {"enabled": False},
    "wall_clock_breakdown": False,
}


def build_student(tied: bool) -> tuple[torch.nn.Module, Any]:
    """The demo student (fixed seed, float32, train mode), its head tied or not, and its processor."""
    from dataclasses import replace

    from pipeline.demo.models import STUDENT_SPEC, build_model
    from pipeline.demo.tokenizer import build_processor, build_tokenizer

    tokenizer = build_tokenizer()
    model = build_model(replace(STUDENT_SPEC, tie_word_embeddings=tied), tokenizer, seed=1).train()
    if (model.lm_head.weight is model.get_input_embeddings().weight) != tied:
        raise AssertionError(f"the student's head is {'not ' if tied else ''}tied to its embeddings")
    return model, build_processor(tokenizer)


def micro_batch(processor: Any, rank: int, micro: int) -> dict[str, torch.Tensor]:
    """Rank ``rank``'s micro-batch ``micro``: two chat rows, each a random 56x56 image and a caption.

    Labels supervise the caption tokens only (``-100`` elsewhere, padding included).
    """
    from PIL import Image

    g = torch.Generator().manual_seed(100 + GAS * rank + micro)
    words = ["red", "blue", "circle", "square", "small", "large", "left", "right", "top", "bottom"]
    texts, images, answers = [], [], []
    for row in range(2):
        pixels = torch.randint(0, 256, (56, 56, 3), generator=g, dtype=torch.uint8).numpy()
        images.append(Image.fromarray(pixels))
        n_words = 3 + 2 * row + rank + micro
        answer = " ".join(words[int(i)] for i in torch.randint(0, len(words), (n_words,), generator=g))
        answers.append(answer + "<|im_end|>")
        texts.append(
            "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n"
            "<|im_start|>assistant\n" + answers[-1]
        )
    batch = dict(processor(text=texts, images=images, return_tensors="pt", padding=True))
    labels = torch.full_like(batch["input_ids"], -100)
    for row, answer in enumerate(answers):
        n = len(processor.tokenizer(answer, add_special_tokens=False)["input_ids"])
        last = int(batch["attention_mask"][row].nonzero().max())  # right padding
        labels[row, last - n + 1 : last + 1] = batch["input_ids"][row, last - n + 1 : last + 1]
    batch["labels"] = labels
    return batch


def teacher_topk(
    labels: torch.Tensor, vocab: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A normalised top-k + tail target per supervised token: ``(ids [N, k], logprobs [N, k], tail [N])``."""
    n = int((labels[:, 1:] != -100).sum())
    g = torch.Generator().manual_seed(seed)
    full = torch.log_softmax(3.0 * torch.randn(n, vocab, generator=g, dtype=torch.float64), dim=-1)
    lp, ids = full.topk(TOP_K, dim=-1)
    tail = torch.logsumexp(full.scatter(1, ids, -math.inf), dim=-1)
    return ids, lp.float(), tail.float()


def step_loss(model: Any, batch: dict[str, torch.Tensor], rank: int, micro: int, vocab: int) -> torch.Tensor:
    """Mean CE plus mean top-k GJSD of one micro-batch, through ``student_token_scores`` (fused head)."""
    from pipeline.train.student_forward import student_token_scores

    scores = student_token_scores(
        model,
        dict(batch),
        real_vocab=vocab,
        topk=teacher_topk(batch["labels"], vocab, 200 + GAS * rank + micro),
        beta=BETA,
        chunk_size=CHUNK,
        vocab_block=BLOCK,
    )
    assert scores.tokens.kl is not None
    return scores.tokens.ce.mean() + scores.tokens.kl.mean()


def reference_step(tied: bool) -> dict[str, Any]:
    """The ZeRO-3 step's expected result: every micro-batch's loss, averaged gradients, SGD update."""
    model, processor = build_student(tied)
    vocab = len(processor.tokenizer)
    losses = [step_loss(model, micro_batch(processor, r, m), r, m, vocab) for r, m in MICRO_BATCHES]
    torch.stack(losses).mean().backward()
    grad = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    with torch.no_grad():
        param = {n: p - LR * p.grad if p.grad is not None else p.clone() for n, p in model.named_parameters()}
    return {
        "loss": torch.stack([x.detach() for x in losses]).reshape(WORLD, GAS),
        "grad": grad,
        "param": param,
    }


def zero3_step(out: str, tied: bool) -> None:
    """The step under a real ZeRO-3 engine; rank 0 writes the gathered results to ``out``."""
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from pipeline.train.student_forward import is_partitioned, output_head

    # The CPU backend JIT-compiles a shared-memory all-reduce used only by inference (about a minute
    # on first use, and it needs a compiler); training collectives go through gloo either way.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    model, processor = build_student(tied)
    vocab = len(processor.tokenizer)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR), config=DS_CONFIG
    )
    head = output_head(engine)[0]
    gathers = _count_head_gathers(deepspeed, head)
    losses, phases = [], []
    for m in range(GAS):
        if not is_partitioned(head) or head.numel() != 0:
            raise AssertionError(f"head not partitioned before micro-batch {m}: {head.shape}")
        start = len(gathers)
        loss = step_loss(engine, micro_batch(processor, rank, m), rank, m, vocab)
        middle = len(gathers)
        engine.backward(loss)
        phases.append((middle - start, len(gathers) - middle))  # head gathers in forward, in backward
        losses.append(loss.detach().float())
        if m < GAS - 1:
            engine.step()  # DeepSpeed's contract: step after every backward; it updates at the boundary
    grads = {n: safe_get_full_grad(p) for n, p in engine.module.named_parameters()}
    engine.step()
    params = {}
    for n, p in engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            params[n] = p.detach().clone()
    every = [torch.zeros(GAS) for _ in range(WORLD)]
    torch.distributed.all_gather(every, torch.stack(losses))
    if rank == 0:
        torch.save(
            {
                "loss": torch.stack(every),
                "grad": {n: g.detach().clone() for n, g in grads.items() if g is not None},
                "param": params,
                "head_gathers": phases,
            },
            out,
        )
    torch.distributed.barrier()


def _count_head_gathers(deepspeed: Any, head: torch.Tensor) -> list[bool]:
    """Record every ``GatheredParameters`` entered on the head (``student_forward.head_gather`` looks
    ``deepspeed.zero.GatheredParameters`` up at call time); returns the growing record."""
    record: list[bool] = []
    real = deepspeed.zero.GatheredParameters

    def counting(params: Any, *args: Any, **kwargs: Any) -> Any:
        if any(p is head for p in params):
            record.append(True)
        return real(params, *args, **kwargs)

    deepspeed.zero.GatheredParameters = counting
    return record


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    zero3_step(sys.argv[1], tied=sys.argv[2] == "tied")
