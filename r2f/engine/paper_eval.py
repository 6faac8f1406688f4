"""Model-running side of the R2F paper's metrics: USR, RAP and identity drift (GUR is a ratio of two
TOFU utilities, computed in :mod:`r2f.engine.evaluation`). Formulas live in :mod:`r2f.engine.metrics.paper`."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

from r2f.config import Config, TrainConfig
from r2f.engine.metrics.base import MetricResult
from r2f.engine.metrics.paper import contains_answer, usr
from r2f.engine.models.encoding import collate, encode_qa
from r2f.engine.models.head import masked_states, mean_kl_chunked
from r2f.engine.models.prompt import prompt_format
from r2f.engine.models.training import train_model
from r2f.engine.paraphrase import make_all_views
from r2f.engine.scoring import generate, score, scoring_precision

Tick = Callable[[int], None] | None


def usr_prompts(cfg: Config, items) -> list[tuple[str, str, str, str]]:
    """(item id, prompt kind, question, answer): the original question, TOFU's paraphrased question
    and the rule paraphrases *beyond* those used for the gradient and eta calibration (unseen)."""
    n = cfg.paraphrase.views + 2  # gradient views + calibration views (r2f.engine.unlearn.base.views_split)
    views = make_all_views(items, n + 2, cfg.paraphrase)
    out = []
    for it, v in zip(items, views):
        out.append((it.id, "original", it.question, it.answer))
        if it.paraphrased_question:
            out.append((it.id, "paraphrased", it.paraphrased_question, it.answer))
        out += [(it.id, "unseen", q, it.answer) for q in v.questions[n:] if not v.repeated]
    return out


def usr_eval(model, tok, cfg: Config, items, tick: Tick = None) -> MetricResult:
    prompts = usr_prompts(cfg, items)
    gens = generate(model, tok, [p[2] for p in prompts], cfg.models.max_len, cfg.eval.max_new_tokens,
                    cfg.eval.batch_size, tick)
    hits = [contains_answer(g, q, a, cfg.eval.key_recall) for (_i, _k, q, a), g in zip(prompts, gens)]
    per_kind = {}
    for kind in ("original", "paraphrased", "unseen"):
        h = [x for p, x in zip(prompts, hits) if p[1] == kind]
        if h:
            per_kind[kind] = usr(h)
    per_item: dict[str, list[bool]] = {}
    for p, h in zip(prompts, hits):
        per_item.setdefault(p[0], []).append(h)
    return MetricResult("usr", usr(hits), {i: usr(h) for i, h in per_item.items()},
                        {"by_prompt": per_kind, "n_prompts": len(prompts)})


def rap_eval(model, tok, cfg: Config, items, tick: Tick = None) -> MetricResult:
    """Relearning attack: fine-tune a copy for ``eval.rap_steps`` steps on the forget items'
    *paraphrased* questions and answers, then measure the original answers' probability
    (exp(-mean answer NLL)). Lower is better; the retain model's value is what the paraphrases alone
    teach."""
    ec = cfg.eval
    data = [encode_qa(tok, q.paraphrased_question or q.question, q.paraphrased_answer or q.answer,
                      cfg.models.max_len) for q in items]
    bs = ec.rap_batch_size
    epochs = max(1, -(-ec.rap_steps * bs // len(data)))
    attacked = copy.deepcopy(model)
    train = TrainConfig(epochs=epochs, lr=ec.rap_lr, batch_size=bs, warmup_frac=0.0, weight_decay=0.0)
    train_model(attacked, data, train, tok.pad_token_id, cfg.unlearn.seed, max_steps=ec.rap_steps,
                precision=ec.precision)  # its own autocast: the evaluation's precision
    attacked.eval()
    with scoring_precision(ec.precision):
        sc = score(attacked, tok, [(q.question, q.answer) for q in items], cfg.models.max_len, ec.batch_size,
                   detail=False, tick=tick)
    probs = {q.id: math.exp(-s.nll) for q, s in zip(items, sc)}
    return MetricResult("rap", sum(probs.values()) / len(probs), probs,
                        {"steps": ec.rap_steps, "lr": ec.rap_lr, "batch_size": bs})


def kl_over_texts(original, model, tok, texts: Sequence[tuple[str, str]], max_len: int, batch_size: int) -> float:
    """Mean over batches of the mean KL(original || model) over every position of (question, answer)
    texts (identity drift here; the proxy's distance to its target in r2f.engine.proxy)."""
    import torch

    enc = [encode_qa(tok, q, a, max_len) for q, a in texts]
    vals = []
    with torch.inference_mode():
        for b in range(0, len(enc), batch_size):
            batch = collate(enc[b:b + batch_size], tok.pad_token_id)
            # both models' next-token distributions in chunks (models.head): no [B, T, vocab] logits
            vals.append(float(mean_kl_chunked(masked_states(original, batch), masked_states(model, batch))))
    return sum(vals) / len(vals)


def drift_eval(original, model, tok, cfg: Config, texts: Sequence[tuple[str, str]]) -> MetricResult:
    """Identity drift: mean KL(original || unlearned) of next-token distributions over every
    position of general prompts (real-authors and world-facts questions with their answers)."""
    value = kl_over_texts(original, model, tok, texts, cfg.models.max_len, cfg.eval.batch_size)
    return MetricResult("drift_kl", value, None, {"n_texts": len(texts), "prompt_format": prompt_format(tok)})
