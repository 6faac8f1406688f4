"""Tiny random models built on the fly (no training) for unit tests."""

from __future__ import annotations


def tiny_random(tofu, hidden=32, layers=2, intermediate=64, seed=0, tokenizer=None):
    from r2f.config import ArchConfig
    from r2f.engine.models.tokenizer import train_tokenizer
    from r2f.engine.models.training import build_model

    tok = tokenizer or train_tokenizer([q.question + " " + q.answer for q in tofu.split("full")[:300]], 400)
    model = build_model(ArchConfig(layers=layers, hidden=hidden, heads=4, kv_heads=2, intermediate=intermediate),
                        len(tok), 64, tok, seed)
    return model, tok


def batches_for(tofu, tok, n_items=3, views=3, split="forget01"):
    from r2f.engine.grads import view_batches
    from r2f.engine.paraphrase import make_all_views

    return view_batches(tok, make_all_views(tofu.split(split)[:n_items], views), 64)
