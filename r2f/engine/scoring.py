"""Batched, inference-only model scoring shared by every evaluation metric.

``score`` runs teacher-forced passes over (question, answer) pairs and returns per-item answer-token
statistics; ``generate`` produces greedy answers. Everything runs under ``torch.inference_mode`` in
batches; sequences are sorted by length so padding stays small.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from r2f.engine.models.encoding import collate, encode_qa
from r2f.engine.models.head import answer_forward
from r2f.engine.models.prompt import prompt_ids


@dataclass(frozen=True)
class ItemScore:
    """Answer-token statistics of one (question, answer) pair."""

    nll: float  # mean answer-token NLL
    n_tokens: int
    logprobs: tuple[float, ...]  # log p(label_t) per answer token
    mu: tuple[float, ...]  # E_z[log p(z)] of the next-token distribution (Min-k%++)
    sigma: tuple[float, ...]  # its standard deviation
    argmax: tuple[int, ...]  # the model's argmax next-token prediction per answer position
    labels: tuple[int, ...]  # the answer's token ids (ending with EOS)

    @property
    def argmax_hit(self) -> tuple[bool, ...]:
        return tuple(p == y for p, y in zip(self.argmax, self.labels))


def scoring_precision(precision: str):
    """The context teacher-forced scoring runs in (``eval.precision``): bfloat16 autocast for
    ``bf16`` (weights stay float32; log-softmax in float32), a no-op for ``fp32``. Generation is
    never run under it: greedy decoding flips at near-ties under bf16 and ROUGE moved by up to 19 %
    (bench/results/eval_precision.md), while the scored probabilities agree to 0.5 %."""
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def score(model, tokenizer, pairs: Sequence[tuple[str, str]], max_len: int, batch_size: int = 64,
          detail: bool = True, tick: Callable[[int], None] | None = None) -> list[ItemScore]:
    """Teacher-forced answer-token statistics of (question, answer) pairs, in input order.

    ``detail=False`` skips the per-token statistics (NLL only; faster for perturbed answers).
    Vocabulary-wide work (logits, log-softmax) is done at answer positions only and in chunks of at
    most ``models.head.LOGIT_BUDGET`` logits, so its memory scales with neither the whole sequence
    nor the vocabulary (bench/results/scoring.json).
    """
    import torch

    enc = [encode_qa(tokenizer, q, a, max_len) for q, a in pairs]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i].input_ids))
    out: list[ItemScore | None] = [None] * len(enc)
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            batch = collate([enc[i] for i in idx], tokenizer.pad_token_id)
            # the output layer at answer positions only, in chunks (models.head): neither the prompt
            # positions nor the vocabulary multiply the memory
            st = answer_forward(model, batch)
            want = ("logp", "mu", "sigma", "argmax") if detail else ("logp",)
            got = st.stats(want)
            tok_lp, y = got["logp"], st.labels
            if detail:
                mu, sigma, pred = got["mu"], got["sigma"], got["argmax"]
            k = 0
            for i, n in zip(idx, st.counts()):
                lp = tok_lp[k:k + n]
                nll = float(-lp.mean()) if n else float("nan")
                if detail:
                    out[i] = ItemScore(nll, n, tuple(lp.tolist()), tuple(mu[k:k + n].tolist()),
                                       tuple(sigma[k:k + n].tolist()), tuple(pred[k:k + n].tolist()),
                                       tuple(y[k:k + n].tolist()))
                else:
                    out[i] = ItemScore(nll, n, (), (), (), (), ())
                k += n
            if tick:
                tick(len(idx))
    return out  # type: ignore[return-value]


def generate(model, tokenizer, questions: Sequence[str], max_len: int, max_new_tokens: int = 200,
             batch_size: int = 64, tick: Callable[[int], None] | None = None) -> list[str]:
    """Greedy answers (left-padded batches), stopping at EOS; at most ``max_new_tokens`` new tokens
    and never past the model's context of ``max_len`` tokens."""
    import torch

    prompts = [prompt_ids(tokenizer, q)[-(max_len // 2):] for q in questions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            n = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), n), pad, dtype=torch.long)
            att = torch.zeros((len(idx), n), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, n - len(prompts[i]):] = torch.tensor(prompts[i])
                att[r, n - len(prompts[i]):] = 1
            new = min(max_new_tokens, max_len - n)
            gen = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=new, do_sample=False,
                                 pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
            for r, i in enumerate(idx):
                out[i] = tokenizer.decode(gen[r, n:], skip_special_tokens=True).strip()
            if tick:
                tick(len(idx))
    return out
