"""Fine-tuning recipe of the pretrained world: which way memorises TOFU QA into SmolLM2-135M-Instruct
fastest on 2 CPU cores (docs/worlds.md, issue #19 item 3).

    python bench/pretrained_recipe.py [--quick] [--recipes full-bf16,top8-bf16,...]
      -> bench/results/pretrained_recipe.json / .md

Every recipe fine-tunes the packaged model on the same QA (TOFU authors 30-39, 200 QA: authors that
no world trains, evaluates or calibrates on) for the same epochs, in its own process (wall time and
peak RSS are its own), and reports the answer NLL of the trained QA (memorisation) and of two authors
it never saw (40-41: what a retain model knows of an unseen author). The pretrained world needs the
trained NLL far below the unseen one (the target must fail forget quality, its retain model pass).
Rows already in the JSON from the same code are kept, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import math
import time

from common import ENGINE, parser, peak_rss_mb, run_rows, setup, write

RECIPES = {  # name: models.pretrained fields
    "full-bf16": {"method": "full", "precision": "bf16", "lr": 1e-4},
    "top8-bf16": {"method": "full", "precision": "bf16", "train_layers": 8, "lr": 1e-4},
    "top8-bf16-lr3e-4": {"method": "full", "precision": "bf16", "train_layers": 8, "lr": 3e-4},
    "lora32-bf16": {"method": "lora", "precision": "bf16", "lr": 1e-3},
    "full-fp32": {"method": "full", "precision": "fp32", "lr": 1e-4},
}
TRAIN_AUTHORS, UNSEEN_AUTHORS = range(30, 40), range(40, 42)
DEPS = (*ENGINE, "bench/pretrained_recipe.py")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--one", help="internal: run one recipe in this process")
    args = p.parse_args()
    setup()
    if args.one:
        print("RESULT " + json.dumps(_one(args, args.one)), flush=True)
        return
    stem = "pretrained_recipe_quick" if args.quick else "pretrained_recipe"
    names = [r for r in args.recipes.split(",") if r]
    for name in names:
        if name not in RECIPES:
            raise SystemExit(f"--recipes: unknown recipe {name!r}; expected {', '.join(RECIPES)}")
    run_rows(__file__, args, stem, [({"recipe": n}, ["--one", n, "--epochs", str(args.epochs)]) for n in names],
             lambda rows: _write(args, rows))

def _one(args, name: str) -> dict:
    import torch
    from common import load_cfg

    from r2f.config.ml import PretrainedConfig, TrainConfig
    from r2f.engine.data import load_tofu
    from r2f.engine.models.encoding import encode_qa
    from r2f.engine.models.io import load_model
    from r2f.engine.models.nll import mean_nll
    from r2f.engine.models.training import train_model
    from r2f.engine.pretrained import materialize
    from r2f.engine.zoo import _freeze_below

    cfg = load_cfg(args)
    r = dict(RECIPES[name])
    lr = r.pop("lr")
    epochs = 1 if args.quick else args.epochs
    pc = PretrainedConfig(**r, train=TrainConfig(epochs=epochs, lr=lr, batch_size=8))
    tofu = load_tofu(cfg.data.tofu_dir)
    trained = tofu.authors(TRAIN_AUTHORS)[: 40 if args.quick else None]
    unseen = tofu.authors(UNSEEN_AUTHORS)
    model, tok = load_model(materialize(cfg.state_dir, pc.name, print))
    max_len = 256
    before = {"trained": mean_nll(model, tok, trained, max_len), "unseen": mean_nll(model, tok, unseen, max_len)}
    if pc.method == "lora":
        from peft import LoraConfig as PeftLora
        from peft import get_peft_model

        model = get_peft_model(model, PeftLora(r=pc.lora_rank, lora_alpha=2 * pc.lora_rank, lora_dropout=0.0,
                                               target_modules=list(cfg.lora.target_modules)))
    elif pc.train_layers:
        _freeze_below(model, pc.train_layers)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    enc = [encode_qa(tok, q.question, q.answer, max_len) for q in trained]
    tokens = sum(len(e.input_ids) for e in enc)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    losses = train_model(model, enc, pc.train, tok.pad_token_id, 0, precision=pc.precision)
    wall = time.perf_counter() - t0
    if pc.method == "lora":
        model = model.merge_and_unload()
    after = {"trained": mean_nll(model, tok, trained, max_len), "unseen": mean_nll(model, tok, unseen, max_len)}
    return {"method": pc.method, "precision": pc.precision, "train_layers": pc.train_layers, "lr": lr,
            "epochs": epochs, "train_qa": len(enc), "train_tokens": tokens, "trainable_m": round(trainable / 1e6, 2),
            "wall_s": round(wall, 1), "s_per_epoch": round(wall / epochs, 1), "tok_per_s": round(tokens * epochs / wall, 1),
            "peak_rss_mb": round(peak_rss_mb()), "loss_curve": [round(x, 4) for x in losses],
            "nll_trained_before": round(before["trained"], 4), "nll_trained": round(after["trained"], 4),
            "nll_unseen_before": round(before["unseen"], 4), "nll_unseen": round(after["unseen"], 4),
            "p_trained": round(math.exp(-after["trained"]), 4), "gap": round(after["unseen"] - after["trained"], 4)}


def _write(args, rows) -> None:
    cols = ["recipe", "trainable_m", "epochs", "train_qa", "s_per_epoch", "tok_per_s", "peak_rss_mb",
            "nll_trained_before", "nll_trained", "p_trained", "nll_unseen_before", "nll_unseen", "gap"]
    notes = [f"Each recipe fine-tunes the packaged SmolLM2-135M-Instruct on TOFU authors {TRAIN_AUTHORS.start}-"
             f"{TRAIN_AUTHORS.stop - 1} (batch 8, AdamW, warmup + cosine), in its own process.",
             "nll_trained: mean answer-token NLL of the trained QA after fine-tuning (p_trained = exp(-nll)); "
             f"nll_unseen: of authors {UNSEEN_AUTHORS.start}-{UNSEEN_AUTHORS.stop - 1}, never trained; "
             "gap = unseen - trained (what separates a target from its retain model).",
             "bf16: bfloat16 autocast with float32 weights and optimizer; topN: only the top N of 30 decoder "
             "layers (+ final norm) trained; lora32: rank-32 LoRA on every linear layer, merged."]
    write("pretrained_recipe", args, rows, cols, notes, {}, deps=DEPS)


if __name__ == "__main__":
    main()
