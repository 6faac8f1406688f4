"""Proxies for real targets: a smaller same-family model built from the target itself.

No smaller pretrained sibling of the packaged SmolLM2 is installable offline, so the proxy keeps the
first and last few of the target's decoder layers (the middle ones are the most redundant: measured
held-out KL to the target right after the cut, 10 of 30 layers: evenly spaced 11.9 nats, first 9 +
last 1 18.8, first 4 + last 6 7.3; see docs/real-models.md) with embeddings, final norm and head
copied, and is then distilled for a few hundred steps toward the target's next-token distributions
(KL(target || proxy) over every position) on general text. Without the distillation such a cut
is useless (perplexity ~1e8 for the first 8 of 30 layers, see shared/notes/models.md).

The distillation text is TOFU's fictitious-author QA in the target's prompt format: English prose the
target has never seen, disjoint from the real-knowledge forget/neighbour sets (real_authors,
world_facts), so the proxy learns the target's general behaviour and none of the facts a request
will later remove.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

from r2f.engine.metrics.paper import mean_kl_tensor
from r2f.engine.models.encoding import collate, encode_qa
from r2f.engine.models.io import load_model, save_model
from r2f.engine.paper_eval import kl_over_texts


def keep_layers(n_layers: int, first: int, last: int) -> list[int]:
    """The first ``first`` and the last ``last`` layer indices of ``n_layers``."""
    if first < 1 or last < 1 or first + last > n_layers:
        raise ValueError(f"keep 1..{n_layers} layers in all, at least one at each end; got {first} + {last}")
    return list(range(first)) + list(range(n_layers - last, n_layers))


def cut_layers(model, layers: Sequence[int]):
    """A copy of a Llama-family model with only ``layers`` (indices into ``model.model.layers``)."""
    import copy

    import torch

    student = copy.deepcopy(model)
    kept = [student.model.layers[i] for i in layers]
    for new, layer in enumerate(kept):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new
    student.model.layers = torch.nn.ModuleList(kept)
    cfg = student.config
    cfg.num_hidden_layers = len(kept)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in layers]
    return student


def distill(teacher, student, tokenizer, texts: Sequence[tuple[str, str]], steps: int, lr: float,
            batch_size: int, max_len: int, seed: int = 0, tick=None) -> list[float]:
    """AdamW on KL(teacher || student) over all positions of (question, answer) texts. The
    (tied) embeddings stay frozen: only the kept layers and the final norm adapt."""
    import torch

    enc = [encode_qa(tokenizer, q, a, max_len) for q, a in texts]
    gen = torch.Generator().manual_seed(seed)
    student.get_input_embeddings().weight.requires_grad_(False)
    student.get_output_embeddings().weight.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10))
                                              * 0.5 * (1 + math.cos(math.pi * s / steps)))
    teacher.eval()
    student.train()
    curve = []
    for _ in range(steps):
        idx = torch.randint(len(enc), (batch_size,), generator=gen).tolist()
        b = collate([enc[i] for i in idx], tokenizer.pad_token_id)
        kw = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
        with torch.no_grad():
            t_logits = teacher(**kw).logits
        loss = mean_kl_tensor(t_logits, student(**kw).logits, b["attention_mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        curve.append(loss.item())
        if tick:
            tick()
    student.eval()
    for p in student.parameters():
        p.requires_grad_(True)
    return curve


def held_out_kl(teacher, student, tokenizer, texts, max_len: int, batch_size: int = 16) -> float:
    return kl_over_texts(teacher, student, tokenizer, texts, max_len, batch_size)


def build_layer_proxy(target_dir: str | Path, out: str | Path, first: int, last: int, texts, held_out,
                      steps: int, lr: float = 2e-4, batch_size: int = 8, max_len: int = 128, seed: int = 0,
                      log=lambda _m: None, tick=None) -> Path:
    """Cut ``target_dir`` to ``keep`` layers, distil it on ``texts``, save it to ``out`` (atomic).
    Cached: an existing ``out`` with the same recipe is returned as is."""
    import torch

    out = Path(out)
    recipe = {"target": str(target_dir), "first": first, "last": last, "steps": steps, "lr": lr, "batch_size": batch_size,
              "max_len": max_len, "seed": seed, "n_texts": len(texts)}
    meta_p = out / "r2f_model.json"
    if meta_p.is_file() and json.loads(meta_p.read_text()).get("proxy_recipe") == recipe:
        return out
    torch.manual_seed(seed)
    teacher, tok = load_model(target_dir)
    layers = keep_layers(teacher.config.num_hidden_layers, first, last)
    student = cut_layers(teacher, layers)
    kl_before = held_out_kl(teacher, student, tok, held_out, max_len)
    t0 = time.perf_counter()
    curve = distill(teacher, student, tok, texts, steps, lr, batch_size, max_len, seed, tick)
    kl_after = held_out_kl(teacher, student, tok, held_out, max_len)
    log(f"proxy: {len(layers)}/{teacher.config.num_hidden_layers} layers {layers}; held-out KL to the target "
        f"{kl_before:.2f} -> {kl_after:.2f} after {steps} steps ({time.perf_counter() - t0:.0f} s)")
    meta = {"role": "proxy", "source": "layer-subset+distillation", "layers": layers, "proxy_recipe": recipe,
            "kl_before": kl_before, "kl_after": kl_after, "distill_s": round(time.perf_counter() - t0, 1),
            "loss_curve": curve[:: max(1, len(curve) // 50)],
            "params": sum(p.numel() for p in student.parameters())}
    return save_model(student, tok, out, meta)
