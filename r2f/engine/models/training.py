"""Llama-architecture causal LMs built from a seed and trained on the answer-token NLL."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from r2f.engine.models.encoding import Encoded, collate
from r2f.engine.models.nll import token_nll

if TYPE_CHECKING:
    from r2f.config import ArchConfig, TrainConfig


def build_model(arch: ArchConfig, vocab_size: int, max_len: int, tokenizer, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
        num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads, max_position_embeddings=max_len,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def train_model(model, data: Sequence[Encoded], train: TrainConfig, pad_id: int, seed: int,
                progress=None, max_steps: int | None = None) -> list[float]:
    """AdamW with linear warmup and cosine decay on answer-token NLL. Returns per-epoch mean loss.

    ``max_steps`` stops early (the schedule then spans ``max_steps``)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(data) / train.batch_size)
    total = steps_per_epoch * train.epochs if max_steps is None else min(max_steps, steps_per_epoch * train.epochs)
    warm = max(1, int(train.warmup_frac * total))
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    model.train()
    losses, done = [], 0
    for _ in range(train.epochs):
        order = torch.randperm(len(data), generator=gen).tolist()
        tot, n = 0.0, 0
        for b in range(steps_per_epoch):
            if done >= total:
                break
            batch = collate([data[i] for i in order[b * train.batch_size:(b + 1) * train.batch_size]], pad_id)
            loss = token_nll(model, batch).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot, n, done = tot + loss.item(), n + 1, done + 1
            if progress:
                progress()
        if n:
            losses.append(tot / n)
    model.eval()
    return losses
