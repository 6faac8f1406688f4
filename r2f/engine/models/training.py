"""Llama-architecture causal LMs built from a seed and trained on the answer-token NLL."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
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
                progress=None, max_steps: int | None = None, checkpoint: Path | None = None,
                precision: str = "fp32") -> list[float]:
    """AdamW with linear warmup and cosine decay on answer-token NLL. Returns per-epoch mean loss.

    ``max_steps`` stops early (the schedule then spans ``max_steps``). ``checkpoint``: a file written
    after every epoch (weights, optimizer, schedule, losses) and resumed from when it exists, so a long
    fine-tuning killed mid-way loses at most one epoch; the result equals an uninterrupted run's (the
    data order is replayed from the seed). Deleted by the caller once the model is saved.
    ``precision="bf16"``: the forward and backward run under bfloat16 autocast (weights, gradients and
    optimizer state stay float32)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(data) / train.batch_size)
    total = steps_per_epoch * train.epochs if max_steps is None else min(max_steps, steps_per_epoch * train.epochs)
    warm = max(1, int(train.warmup_frac * total))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=train.lr, weight_decay=train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    losses, done, start = [], 0, 0
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        losses, done, start = [float(x) for x in state["losses"]], int(state["done"]), int(state["epoch"])
        for _ in range(start):  # the data order of the epochs already trained
            torch.randperm(len(data), generator=gen)
        if progress:
            for _ in range(done):
                progress()
    model.train()
    for epoch in range(start, train.epochs):
        order = torch.randperm(len(data), generator=gen).tolist()
        tot, n = 0.0, 0
        for b in range(steps_per_epoch):
            if done >= total:
                break
            batch = collate([data[i] for i in order[b * train.batch_size:(b + 1) * train.batch_size]], pad_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = token_nll(model, batch).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            sched.step()
            tot, n, done = tot + loss.item(), n + 1, done + 1
            if progress:
                progress()
        if n:
            losses.append(tot / n)
        if checkpoint is not None and epoch + 1 < train.epochs:
            _save_checkpoint(Path(checkpoint), {"model": model.state_dict(), "opt": opt.state_dict(),
                                                "sched": sched.state_dict(), "losses": losses, "done": done,
                                                "epoch": epoch + 1})
    model.eval()
    return losses


def _save_checkpoint(path: Path, state: dict) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill mid-save leaves the previous epoch's checkpoint
