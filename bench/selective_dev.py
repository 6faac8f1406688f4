"""Development set for selective forgetting (issue #20): variants and their hyper-parameters are chosen
here, never on the evaluation sets.

    python bench/selective_dev.py [--quick] [--variants r2f,r2f_pc,...] [--seeds 1]
      -> bench/results/selective_dev.json / .md

The toy world's target knows forget10's 20 authors; the goal splits are forget01 (authors 198-199)
and forget05 (190-199). The dev request is authors 180-181 (two authors, like forget01), and the dev
neighbours are authors 182-189: both inside forget10 only, disjoint from forget01/05, from
retain_perturbed (authors 0-19), from the calibration/covariance authors (20-29) and from the
general-knowledge sets. (Consequence: forget10 rows are not independent of choices made here.)

Per variant: ``dev_fq`` = forget quality of the dev request (KS test of its forget truth ratios
against the retain-forget10 model's on the same rows, which never saw them); the answer NLL of the
dev request and of the dev neighbours before and after (``neighbour_rise``: relative NLL rise).
The goal shape: ``dev_fq`` >= 0.05 with a small ``neighbour_rise``.
In the pretrained world (``--params params-smollm2-tofu.yaml``, ``selective_dev_smollm2``) the target
knows only forget05's authors (190-199, evaluation sets) and retain authors 0-29 (0-19 are
retain_perturbed), so the dev request is retain authors 28-29 and the dev neighbours 26-27, both taken
out of the calibration items (which become authors 20-25). No model excludes 28-29, so there is no
dev forget quality; its stand-in is what fails the gate there, privleak: ``dev_auc`` is the Min-k%
(k=0.4) AUC of the dev request against QA of authors 40-49, which no model of the world saw (0.5 =
indistinguishable), and ``dev_privleak`` is privleak (metrics.mia.privleak) against a retain-model
AUC of 0.5; ``unseen_nll`` is the target's answer NLL on those authors, the level a
model that never learned the request sits at. r2f_pc's own forget level reads authors 30-34
(``unlearn.r2f_pc.level_items``), not 40-49.

Rows already in the JSON from the same code are kept (resume).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from common import ENGINE, load_cfg, parser, run_rows, setup, world_of, write

DEV_FORGET, DEV_NEIGHBOURS = range(180, 182), range(182, 190)
# the pretrained world (target: forget05 + retain authors 0-29): dev request, neighbours, calibration
# authors, and the never-seen authors the dev MIA compares the request with
PT_FORGET, PT_NEIGHBOURS, PT_CALIB, PT_UNSEEN = range(28, 30), range(26, 28), range(20, 26), range(40, 50)
_PC = "unlearn.r2f_pc."
# r2f_pc's settings when the named variants were measured (before the level, the 20 % cap and the cost
# levers became its defaults): every variant names each of these, so a later default cannot change
# what a name runs. views/calibration_items None: the shared paraphrase.views / unlearn.eta ones.
_MEASURED = {"preconditioner": "kfac", "retain_prob_drop": 0.05, "forget_level": None, "steps": 3,
             "views": None, "calibration_items": None}


def _pc(extra: dict | None = None, **settings) -> tuple[str, dict]:
    """An r2f_pc variant: _MEASURED with ``settings`` (unlearn.r2f_pc keys) and ``extra`` (full keys)."""
    return "r2f_pc", {**{_PC + k: v for k, v in {**_MEASURED, **settings}.items()}, **(extra or {})}


_IN = {"preconditioner": "input", "retain_prob_drop": None}  # A_r only, the relative 10 % NLL budget
_LVL = {"forget_level": "unseen", "retain_prob_drop": 0.20}
VARIANTS = {  # name: (method, overrides); "r2f_pc" is the current default, every other r2f_pc variant is explicit
    "r2f": ("r2f", {}),
    "r2f_pc": ("r2f_pc", {}),
    "r2f_pc_rel10": _pc(**_IN),
    "r2f_pc_null": _pc(preconditioner="nullspace", retain_prob_drop=None),
    "r2f_pc_1step": _pc(**_IN, steps=1),
    "r2f_pc_damp1e-2": _pc(**_IN, damping=1e-2),
    "r2f_pc_damp1e-4": _pc(**_IN, damping=1e-4),
    "r2f_pc_5step": _pc(**_IN, steps=5),
    "r2f_pc_p05": _pc(preconditioner="input"),
    "r2f_pc_null_p05": _pc(preconditioner="nullspace"),
    "r2f_pc_p05_5step": _pc(preconditioner="input", steps=5),
    "r2f_pc_p05_damp1e-2": _pc(preconditioner="input", damping=1e-2),
    "r2f_pc_p05_damp1e-4": _pc(preconditioner="input", damping=1e-4),
    "r2f_pc_kfac_p05": _pc(),
    "r2f_pc_wga_p05": _pc(preconditioner="input", token_beta=1.0),
    "r2f_pc_p10": _pc(preconditioner="input", retain_prob_drop=0.10),
    "r2f_pc_p20": _pc(preconditioner="input", retain_prob_drop=0.20),
    "r2f_pc_p10_5step": _pc(preconditioner="input", retain_prob_drop=0.10, steps=5),
    "r2f_pc_kfac_p10": _pc(retain_prob_drop=0.10),
    "r2f_pc_kfac_p20": _pc(retain_prob_drop=0.20),
    "r2f_pc_kfac_wga_p10": _pc(token_beta=1.0, retain_prob_drop=0.10),
    "r2f_pc_wga_p10_5step": _pc(preconditioner="input", token_beta=1.0, retain_prob_drop=0.10, steps=5),
    "r2f_pc_gru": _pc(retain_projection=16),  # GRU projection on 16 retain groups
    "r2f_pc_gru_p10": _pc(retain_projection=16, retain_prob_drop=0.10),
    "r2f_pc_key": _pc({"unlearn.loss_tokens": "key"}),  # the loss on the answers' key words only
    "r2f_pc_key_p10": _pc({"unlearn.loss_tokens": "key"}, retain_prob_drop=0.10),
    "r2f_pc_contrast": _pc(basis="contrast"),
    "r2f_pc_contrast_p10": _pc(basis="contrast", retain_prob_drop=0.10),
    "r2f_pc_lvl_p10": _pc(forget_level="unseen", retain_prob_drop=0.10),
    "r2f_pc_lvl_p20": _pc(**_LVL),
    "r2f_pc_lvl_p20_5step": _pc(**_LVL, steps=5),
    "r2f_pc_in_lvl_p20": _pc(**_LVL, preconditioner="input"),
    "r2f_pc_wga_lvl_p20": _pc(**_LVL, token_beta=1.0),
    # cost levers of the level variant (the goal: <= 0.5x NPO's wall time)
    "r2f_pc_lvl_p20_2step": _pc(**_LVL, steps=2),
    "r2f_pc_lvl_p20_2view": _pc({"paraphrase.views": 2}, **_LVL),
    "r2f_pc_lvl_p20_cal32": _pc({"unlearn.eta.calibration_items": 32}, **_LVL),
    # the three levers together, the candidate that became the default; unlike the default it also refits
    # the decoder's token weighting on 2 views (paraphrase.views), where r2f_pc keeps the 5-view decoder
    "r2f_pc_cheap": _pc({"paraphrase.views": 2, "unlearn.eta.calibration_items": 32}, **_LVL, steps=2),
    "npo": ("npo", {}),
    "fullgrad": ("fullgrad", {}),
}
DEPS = (*ENGINE, "bench/selective_dev.py")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--one", help="internal: variant:seed in this process")
    args = p.parse_args()
    setup()
    if args.one:
        name, seed = args.one.rsplit(":", 1)
        print("RESULT " + json.dumps(_one(args, name, int(seed))), flush=True)
        return
    world = world_of(args.params)
    base = "selective_dev" + (f"_{world}" if world else "")
    stem = base + ("_quick" if args.quick else "")
    names = [v for v in args.variants.split(",") if v]
    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"--variants: unknown variant {name!r}; expected {', '.join(VARIANTS)}")
    jobs = [({"variant": n, "seed": s}, ["--one", f"{n}:{s}"]) for n in names for s in range(args.seeds)]
    run_rows(__file__, args, stem, jobs, lambda rows: _write(args, rows, base))

def _one(args, name: str, seed: int) -> dict:
    from r2f.engine.api import reference_eval, unlearn_model
    from r2f.engine.data import load_tofu
    from r2f.engine.evaluation import _nll_per_set, reference_on
    from r2f.engine.metrics.tofu import forget_quality, truth_ratio
    from r2f.engine.models.io import load_model
    from r2f.engine.models.nll import mean_nll
    from r2f.engine.zoo import ensure_models

    method, over = VARIANTS[name]
    cfg = load_cfg(args, {**over, "unlearn.seed": seed})
    tofu = load_tofu(cfg.data.tofu_dir)
    if cfg.models.pretrained is not None:
        return _one_pretrained(cfg, tofu, method)
    forget_ids = {q.id for q in tofu.authors(DEV_FORGET)}
    forget = [q for q in tofu.split("forget10") if q.id in forget_ids]  # with paraphrased/perturbed answers
    neighbours = tofu.authors(DEV_NEIGHBOURS)
    target, tok = load_model(ensure_models(cfg, splits=("forget10",)).path("target"))
    before = {"forget": mean_nll(target, tok, forget, cfg.models.max_len),
              "neighbours": mean_nll(target, tok, neighbours, cfg.models.max_len)}
    del target
    with tempfile.TemporaryDirectory(dir=Path(cfg.state_dir)) as tmp:
        rep = unlearn_model(cfg, method, forget_split="forget10", out=Path(tmp) / "m", forget_items=forget)
        model, tok = load_model(Path(tmp) / "m")
    after = {"forget": mean_nll(model, tok, forget, cfg.models.max_len),
             "neighbours": mean_nll(model, tok, neighbours, cfg.models.max_len)}
    _gt, para, pert = _nll_per_set(model, tok, cfg, forget, None, "dev")
    ids = [q.id for q in forget]
    tr = truth_ratio(para, pert, aggregator="closer_to_1_better", ids=ids)
    ref_tr, _ = reference_on(reference_eval(cfg, "retain", "forget10"), ids)
    fq = forget_quality(tr, ref_tr)
    return {"method": method, "dev_fq": fq.value, "dev_fq_log10": fq.extra.get("value_log10"),
            "forget_nll_before": round(before["forget"], 4), "forget_nll": round(after["forget"], 4),
            "neighbour_nll_before": round(before["neighbours"], 4), "neighbour_nll": round(after["neighbours"], 4),
            "neighbour_rise": round(after["neighbours"] / before["neighbours"] - 1, 4),
            "eta": rep["eta"], "steps": rep["info"].get("steps"), "wall_s": rep["wall_s"],
            "peak_rss_mb": rep["peak_rss_mb"]}


def _one_pretrained(cfg, tofu, method: str) -> dict:
    """The pretrained world's dev row: the request is retain authors 28-29 (module docstring)."""
    from r2f.engine.api import unlearn_model
    from r2f.engine.metrics.mia import auc, min_k_scores, privleak
    from r2f.engine.models.io import load_model
    from r2f.engine.scoring import score
    from r2f.engine.zoo import ensure_models

    forget, neighbours = tofu.authors(PT_FORGET), tofu.authors(PT_NEIGHBOURS)
    calib, unseen = tofu.authors(PT_CALIB), tofu.authors(PT_UNSEEN)
    ml = cfg.models.max_len

    def measure(model, tok) -> dict:
        sc = {k: score(model, tok, [(q.question, q.answer) for q in v], ml)
              for k, v in (("forget", forget), ("neighbours", neighbours), ("unseen", unseen))}
        mink = {k: min_k_scores([s.logprobs[:-1] for s in v]) for k, v in sc.items()}
        a = auc(mink["forget"], mink["unseen"])
        out = {f"{k}_nll": sum(s.nll for s in v) / len(v) for k, v in sc.items()}
        out.update(auc=a, privleak=privleak(a, 0.5).value)  # a never-seen request's AUC is 0.5
        return out

    target, tok = load_model(ensure_models(cfg, splits=(cfg.data.forget_split,)).path("target"))
    before = measure(target, tok)
    del target
    with tempfile.TemporaryDirectory(dir=Path(cfg.state_dir)) as tmp:
        rep = unlearn_model(cfg, method, out=Path(tmp) / "m", forget_items=forget, calib_items=calib)
        model, tok = load_model(Path(tmp) / "m")
    after = measure(model, tok)
    info = rep["info"]
    return {"method": method, "dev_auc": round(after["auc"], 4), "dev_privleak": round(after["privleak"], 2),
            "dev_privleak_before": round(before["privleak"], 2),
            "forget_nll_before": round(before["forget_nll"], 4), "forget_nll": round(after["forget_nll"], 4),
            "unseen_nll": round(before["unseen_nll"], 4),
            "neighbour_nll_before": round(before["neighbours_nll"], 4),
            "neighbour_nll": round(after["neighbours_nll"], 4),
            "neighbour_rise": round(after["neighbours_nll"] / before["neighbours_nll"] - 1, 4),
            "level": info.get("forget_level"), "level_reached": info.get("level_reached"),
            "eta": rep["eta"], "etas": info.get("etas"), "forget_nll_steps": info.get("forget_nll_steps"),
            "grid_extended": info.get("grid_extended"), "steps": info.get("steps"), "wall_s": rep["wall_s"],
            "direction_s": info.get("direction_s"), "preconditioner_s": info.get("preconditioner_s"),
            "level_s": info.get("level_s"), "peak_rss_mb": rep["peak_rss_mb"], "peak_scope": rep.get("peak_scope"),
            "process_peak_rss_mb": rep.get("process_peak_rss_mb")}


def _write(args, rows, name: str) -> None:
    if "dev_auc" in (rows[0] if rows else {}):
        cols = ["variant", "seed", "dev_auc", "dev_privleak", "forget_nll_before", "forget_nll", "unseen_nll",
                "neighbour_nll_before", "neighbour_nll", "neighbour_rise", "level_reached", "eta", "steps", "wall_s",
                "peak_rss_mb"]
        notes = [f"Pretrained world: dev request = TOFU authors {PT_FORGET.start}-{PT_FORGET.stop - 1} (known to the "
                 f"target, in no evaluation set); dev neighbours {PT_NEIGHBOURS.start}-{PT_NEIGHBOURS.stop - 1}; "
                 f"calibration and covariance items: authors {PT_CALIB.start}-{PT_CALIB.stop - 1} only.",
                 f"dev_auc: Min-k% (k=0.4) AUC of the dev request vs QA of authors {PT_UNSEEN.start}-"
                 f"{PT_UNSEEN.stop - 1}, which no model of this world saw (1 = request recognised, 0.5 = "
                 "indistinguishable); dev_privleak: privleak against an AUC of 0.5 (the gate allows |privleak| <= 50); "
                 "unseen_nll: the target's answer NLL on those authors.",
                 "neighbour_rise: relative answer-NLL rise on the dev neighbours (the utility proxy; retain_perturbed, "
                 "real authors and world facts are evaluation sets and stay out).",
                 "wall_s and peak_rss_mb: the unlearning run alone (the peak counted from its start, the loaded model "
                 "included; the bench's own scoring before and after is not: process_peak_rss_mb has it)."]
    else:
        cols = ["variant", "seed", "dev_fq", "forget_nll_before", "forget_nll", "neighbour_nll_before", "neighbour_nll",
                "neighbour_rise", "eta", "steps", "wall_s"]
        notes = [f"Dev request: TOFU authors {DEV_FORGET.start}-{DEV_FORGET.stop - 1}; dev neighbours: "
                 f"{DEV_NEIGHBOURS.start}-{DEV_NEIGHBOURS.stop - 1} (forget10 only; disjoint from forget01/05, "
                 "retain_perturbed, calibration and general knowledge).",
                 "dev_fq: KS p-value of the dev request's forget truth ratios vs the retain-forget10 model's on the "
                 "same rows; goal shape: dev_fq >= 0.05 with a small neighbour_rise (relative answer-NLL rise).",
                 "Every variant sizes its steps by the same retain budget (unlearn.eta.retain_budget) on the "
                 "calibration authors; r2f_pc builds its covariance on other calibration items."]
    write(name, args, rows, cols, notes, {"variants": {k: list(v) for k, v in VARIANTS.items()}}, deps=DEPS)


if __name__ == "__main__":
    main()
