"""NPO (Zhang et al., 2024) as in open-unlearning: ``-2/beta * logsigmoid(-beta * (logp - logp_ref))``
on forget sequences (sum of answer-token log-probs) plus ``alpha`` x NLL on retain (``unlearn.npo``).
For the ``refusal`` objective the forget term is the refusal NLL instead (DPO-free variant)."""

from __future__ import annotations

import time

from r2f.engine.models.encoding import collate, encode_qa
from r2f.engine.models.nll import token_nll
from r2f.engine.unlearn.base import UnlearnContext, UnlearnResult
from r2f.engine.unlearn.finetune import finetune


def seq_nll(model, batch):
    """Sum (not mean) of answer-token NLL per sequence."""
    n_tok = (batch["labels"][:, 1:] != -100).sum(1)
    return token_nll(model, batch) * n_tok


class NPO:
    name = "npo"

    def run(self, ctx: UnlearnContext) -> UnlearnResult:
        import torch
        import torch.nn.functional as F

        t0 = time.perf_counter()
        uc, nc, tok = ctx.cfg.unlearn, ctx.cfg.unlearn.npo, ctx.tokenizer
        # Reference log-probs of the untouched model, keyed by the batch's token ids.
        ref: dict[tuple, float] = {}
        enc = [encode_qa(tok, q.question, q.answer, ctx.cfg.models.max_len, uc.key_only) for q in ctx.forget]
        with torch.inference_mode():
            for i in range(0, len(enc), 32):
                chunk = enc[i:i + 32]
                for e, v in zip(chunk, seq_nll(ctx.model, collate(chunk, tok.pad_token_id))):
                    ref[tuple(e.input_ids)] = float(v)

        def loss(model, fb, rb):
            if uc.objective == "refusal":
                forget = token_nll(model, fb).mean()
            else:
                keys = [tuple(row[m.bool()].tolist()) for row, m in zip(fb["input_ids"], fb["attention_mask"])]
                ref_nll = torch.tensor([ref[k] for k in keys])
                neg_log_ratio = seq_nll(model, fb) - ref_nll  # = -(logp - logp_ref)
                forget = -F.logsigmoid(nc.beta * neg_log_ratio).mean() * 2 / nc.beta
            return forget + nc.alpha * token_nll(model, rb).mean()

        info = finetune(ctx, nc, loss, self.name, with_retain=True)
        info["direction_s"] = time.perf_counter() - t0
        return UnlearnResult(self.name, ctx.model, None, info)


METHOD = NPO()
