"""Teacher-forced scoring (``r2f.engine.scoring.score``, used by every evaluation metric): the engine's
answer-positions-only log-softmax against the baseline that computes vocabulary-wide logits at every
position, on the same model, pairs and batches, in one run (alternating, best of ``--reps``).

    python bench/scoring.py [--items 60] [--reps 2] [--targets toy,smollm2-tofu]

Writes bench/results/scoring.json / .md: wall time of each, the speed-up, and the largest difference
of any item's answer NLL / Min-k%++ statistic between the two (the change must not move a metric).
"""

from __future__ import annotations

import time

from common import ROOT, overrides_of, parser, setup, write

TARGETS = {"toy": "params.yaml", "smollm2-tofu": "params-smollm2-tofu.yaml"}


def baseline(model, tok, pairs, max_len: int, batch_size: int) -> list[tuple[float, list[float]]]:
    """Every position's logits and log-softmax (the engine's scoring before it kept answer positions only)."""
    import torch

    from r2f.engine.models.encoding import collate, encode_qa

    enc = [encode_qa(tok, q, a, max_len) for q, a in pairs]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i].input_ids))
    out = [None] * len(enc)
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            batch = collate([enc[i] for i in idx], tok.pad_token_id)
            logp = torch.log_softmax(model(input_ids=batch["input_ids"],
                                           attention_mask=batch["attention_mask"]).logits[:, :-1].float(), -1)
            labels = batch["labels"][:, 1:]
            mask = labels != -100
            tok_lp = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
            mu = (logp.exp() * logp).sum(-1)
            for r, i in enumerate(idx):
                out[i] = (float(-tok_lp[r][mask[r]].mean()), mu[r][mask[r]].tolist())
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--items", type=int, default=60, help="retain_perturbed questions (x 6 answers each)")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--targets", default=",".join(TARGETS))
    args = p.parse_args()
    setup()
    from r2f.config import load_config
    from r2f.engine.data import load_tofu
    from r2f.engine.models.io import load_model
    from r2f.engine.scoring import score
    from r2f.engine.zoo import ensure_models

    rows, cfg = [], None
    for target in [t for t in args.targets.split(",") if t]:
        cfg = load_config(ROOT / TARGETS[target], overrides_of(args))
        model, tok = load_model(ensure_models(cfg, print, splits=(cfg.data.forget_split,)).path("target"))
        items = load_tofu(cfg.data.tofu_dir).split("retain_perturbed")[:args.items]
        pairs = [(q.question, a) for q in items for a in (q.answer, *q.perturbed_answers)]
        ml, bs = cfg.models.max_len, cfg.eval.batch_size
        walls = {"baseline": [], "engine": []}
        for _ in range(args.reps):
            t0 = time.perf_counter()
            ref = baseline(model, tok, pairs, ml, bs)
            walls["baseline"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            got = score(model, tok, pairs, ml, bs)
            walls["engine"].append(time.perf_counter() - t0)
        rows.append({"target": target, "pairs": len(pairs), "vocab": len(tok), "batch_size": bs,
                     "baseline_s": min(walls["baseline"]), "engine_s": min(walls["engine"]),
                     "speedup": min(walls["baseline"]) / min(walls["engine"]),
                     "max_nll_diff": max(abs(a.nll - b[0]) for a, b in zip(got, ref)),
                     "max_mu_diff": max(abs(x - y) for a, b in zip(got, ref) for x, y in zip(a.mu, b[1]))})
        print(rows[-1], flush=True)
    write("scoring", args, rows, ["target", "pairs", "vocab", "batch_size", "baseline_s", "engine_s", "speedup",
                                  "max_nll_diff", "max_mu_diff"],
          [f"{args.items} retain_perturbed questions x (answer + perturbed answers), teacher-forced; best of "
           f"{args.reps} alternating repetitions; baseline: logits and log-softmax at every position.",
           "max_*_diff: the largest difference of any item's answer NLL / per-token Min-k%++ mean between the two."],
          {"items": args.items, "reps": args.reps}, cfg=cfg)


if __name__ == "__main__":
    main()
