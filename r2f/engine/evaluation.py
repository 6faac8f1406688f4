"""The TOFU evaluation suite plus the paper's metrics, run on one model for one forget split.

``evaluate`` scores the model (batched, inference mode), then calls the pure formulas of
:mod:`r2f.engine.metrics`. Reference evaluations (the retain model for forget quality and privleak, the
untouched target for GUR and drift) are pipeline artifacts: ``reference_eval`` computes them when
missing and caches them under ``state_dir/evals``; they are never silently skipped.

Data per split (TOFU / open-unlearning): forget = ``<split>_perturbed``, retain = ``retain_perturbed``,
ra = ``real_authors_perturbed``, wf = ``world_facts_perturbed``, MIA holdout = ``holdout<NN>``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from r2f.atomic import write_json
from r2f.config import Config
from r2f.engine.data import load_tofu
from r2f.engine.metrics import (
    auc,
    exact_memorization,
    extraction_strength,
    loss_scores,
    mia,
    min_k_plus_plus_scores,
    min_k_scores,
    privleak,
    zlib_scores,
)
from r2f.engine.metrics.base import MetricResult
from r2f.engine.metrics.paper import gur
from r2f.engine.metrics.summary import split_metrics
from r2f.engine.metrics.tofu import forget_quality, model_utility, rouge_l_recall
from r2f.engine.paper_eval import drift_eval, rap_eval, usr_eval
from r2f.engine.parallel import distributed, map_on_models, split_even
from r2f.engine.scoring import generate, score, scoring_precision
from r2f.errors import R2FError

Progress = Callable[[str, int], Callable] | None
SETS = {"forget": None, "retain": "retain_perturbed", "ra": "real_authors", "wf": "world_facts"}
GUR_KEYS = ("retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio",
            "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio")


class EvalError(R2FError, RuntimeError):
    """An evaluation (or a reference evaluation it needs) cannot be produced; the message says why."""


def holdout_of(split: str) -> str:
    return "holdout" + split.removeprefix("forget")


def _tick(progress: Progress, label: str, total: int):
    return progress(label, total) if progress else None


def _nll_per_set(model, tok, cfg: Config, items, progress: Progress, label: str):
    """(gt scores with token detail, paraphrased NLLs or None, perturbed NLLs per item)."""
    ml, bs = cfg.models.max_len, cfg.eval.batch_size
    gt = score(model, tok, [(q.question, q.answer) for q in items], ml, bs, True,
               _tick(progress, f"{label}: answers", len(items)))
    para = None
    if all(q.paraphrased_answer for q in items):
        para = [s.nll for s in score(model, tok, [(q.question, q.paraphrased_answer) for q in items], ml, bs, False)]
    flat = [(q.question, a) for q in items for a in q.perturbed_answers]
    pert_flat = score(model, tok, flat, ml, bs, False, _tick(progress, f"{label}: perturbed", len(flat)))
    pert, k = [], 0
    for q in items:
        pert.append([s.nll for s in pert_flat[k:k + len(q.perturbed_answers)]])
        k += len(q.perturbed_answers)
    return gt, para, pert


def evaluate(model, tok, cfg: Config, split: str, *, retain_eval: dict | None, original=None,
             progress: Progress = None, paper: bool = True,
             forget_ids: list[str] | None = None, mapper=None, model_path: str | Path | None = None,
             original_path: str | Path | None = None) -> dict[str, MetricResult]:
    """All metrics of ``model`` on forget split ``split`` except GUR (see :func:`add_gur`).

    ``forget_ids``: score only these rows of the split's forget set (a deletion request's rows); the
    retain model's reference (truth ratios, Min-k scores) is cut to the same rows, so forget
    quality and privleak compare like with like. Holdout and utility sets are unchanged.

    ``retain_eval``: the retain model's ``TOFU_EVAL`` dict (forget quality, privleak); ``None`` only
    when evaluating the retain model itself (it is then its own reference). ``original``: the
    untouched target model, for identity drift (``None`` when evaluating the target itself).

    The work is a list of jobs (:func:`eval_jobs`: each scored set, the MIA holdout, USR, RAP,
    drift); the metrics are computed from their concatenated outputs. With a ``mapper`` that shards
    (:func:`r2f.engine.parallel.distributed`) and ``model_path`` (``original_path`` for drift) given, each
    set is cut into one item range per worker and the jobs run on the mapper, each loading the model
    folders; otherwise they run here, in order, on the objects passed."""
    t0 = time.perf_counter()
    remote = distributed(mapper) and model_path is not None and (original is None or original_path is not None)
    jobs = eval_jobs(cfg, split, forget_ids, paper, mapper.workers if remote else 1)
    if remote:
        # longest first (the scheduler hands them out in this order), results back in job order
        order = sorted(range(len(jobs)), key=lambda i: -jobs[i].cost)
        args = [{"job": jobs[i], "split": split, "forget_ids": forget_ids} for i in order]
        done = map_on_models(mapper, model_path, cfg, run_job, args, "evaluation",
                             extra_models={"original": original_path if original is not None else None})
        outs = [None] * len(jobs)
        for i, out in zip(order, done):
            outs[i] = out
    else:
        outs = [j.run(model, tok, cfg, split, forget_ids, original, progress) for j in jobs]
    res = combine_eval(cfg, split, forget_ids, jobs, outs, retain_eval)
    res["_meta"].extra.update(eval_s=round(time.perf_counter() - t0, 1), shards=len(jobs),
                              workers=mapper.workers if remote else 1)
    return res


def _set_items(tofu, cfg: Config, name: str, split: str, forget_ids: list[str] | None) -> list:
    """The items of evaluation set ``name`` (``SETS``; ``holdout``: the MIA holdout of ``split``)."""
    if name == "holdout":
        return tofu.split(holdout_of(split))
    sname = SETS[name]
    items = tofu.split(sname or split)
    if sname and cfg.eval.max_items:
        items = items[:cfg.eval.max_items]
    if not sname and forget_ids is not None:
        items = _subset(items, forget_ids, split)
    return items


def eval_jobs(cfg: Config, split: str, forget_ids: list[str] | None, paper: bool, shards: int) -> list[EvalJob]:
    """The jobs of an evaluation: every set of ``SETS`` and the holdout cut into up to ``shards``
    contiguous item ranges (:class:`SetJob`), then the paper metrics, whole (:class:`UsrJob`,
    :class:`RapJob`, :class:`DriftJob`)."""
    tofu = load_tofu(cfg.data.tofu_dir)
    jobs: list[EvalJob] = []
    for name in (*SETS, "holdout"):
        n = len(_set_items(tofu, cfg, name, split, forget_ids))
        jobs += [SetJob(name, r.start, r.stop) for r in split_even(n, shards)]
    if paper:
        jobs += [UsrJob(), RapJob(), DriftJob()]
    return jobs


# Relative cost per item of a set job, and of a whole paper-metric job (measured phases of the
# default target on forget01: a forget item has 4 perturbed answers and a paraphrase to score, a
# retain item is scored and generated once, the holdout is scored only). Used to order shards only.
COST = {"forget": 5.0, "retain": 1.0, "ra": 0.6, "wf": 0.55, "holdout": 0.25, "usr": 100.0, "rap": 63.0,
        "drift": 26.0}


@dataclass(frozen=True)
class SetJob:
    """Raw scores and generations of items ``[start, stop)`` of evaluation set ``name`` (``SETS``), or
    the scores only of the MIA holdout's (``name`` ``holdout``)."""

    name: str
    start: int
    stop: int

    @property
    def cost(self) -> float:
        return COST[self.name] * (self.stop - self.start)

    def run(self, model, tok, cfg: Config, split: str, forget_ids: list[str] | None, original=None,
            progress: Progress = None) -> dict:
        tofu = load_tofu(cfg.data.tofu_dir)
        t0 = time.perf_counter()
        items = _set_items(tofu, cfg, self.name, split, forget_ids)[self.start:self.stop]
        with scoring_precision(cfg.eval.precision):  # teacher-forced passes only; generation stays fp32
            if self.name == "holdout":
                gt = score(model, tok, [(q.question, q.answer) for q in items], cfg.models.max_len,
                           cfg.eval.batch_size)
                return {"gt": gt, "scoring_s": time.perf_counter() - t0}
            gt, para, pert = _nll_per_set(model, tok, cfg, items, progress, self.name)
        t1 = time.perf_counter()
        gens = generate(model, tok, [q.question for q in items], cfg.models.max_len, cfg.eval.max_new_tokens,
                        cfg.eval.batch_size, _tick(progress, f"{self.name}: generation", len(items)))
        return {"gt": gt, "para": para, "pert": pert, "gens": gens, "scoring_s": t1 - t0,
                "generation_s": time.perf_counter() - t1}


class PaperJob:
    """A paper metric on the whole forget set, one job: its result under ``key``, its time under
    ``phase`` in ``_meta.phase_s``."""

    phase: ClassVar[str]
    key: ClassVar[str]

    @property
    def cost(self) -> float:
        return COST[self.phase]

    def run(self, model, tok, cfg: Config, split: str, forget_ids: list[str] | None, original=None,
            progress: Progress = None) -> dict:
        tofu = load_tofu(cfg.data.tofu_dir)
        t0 = time.perf_counter()
        f_items = _set_items(tofu, cfg, "forget", split, forget_ids)
        out = self.metric(model, tok, cfg, tofu, f_items, original, progress)
        return {"result": out, "s": time.perf_counter() - t0}

    def metric(self, model, tok, cfg: Config, tofu, f_items, original, progress: Progress) -> MetricResult:
        raise NotImplementedError


@dataclass(frozen=True)
class UsrJob(PaperJob):
    phase = key = "usr"

    def metric(self, model, tok, cfg, tofu, f_items, original, progress):
        return usr_eval(model, tok, cfg, f_items, _tick(progress, "usr: generation", len(f_items) * 4))


@dataclass(frozen=True)
class RapJob(PaperJob):
    phase = key = "rap"

    def metric(self, model, tok, cfg, tofu, f_items, original, progress):
        return rap_eval(model, tok, cfg, f_items)


@dataclass(frozen=True)
class DriftJob(PaperJob):
    """Identity drift from ``original`` (the untouched target; None: the target itself, drift 0)."""

    phase, key = "drift", "drift_kl"

    def metric(self, model, tok, cfg, tofu, f_items, original, progress):
        if original is None:
            return MetricResult("drift_kl", 0.0, None, {"note": "the original model itself"})
        general = [(q.question, q.answer) for s in ("real_authors", "world_facts") for q in tofu.split(s)]
        return drift_eval(original, model, tok, cfg, general)


EvalJob = SetJob | PaperJob


def run_job(model, tok, cfg: Config, *, original, job: EvalJob, split: str, forget_ids: list[str] | None) -> dict:
    """Worker side of :func:`evaluate` (module level: pickled by reference): one job on models loaded
    from their folders."""
    return job.run(model, tok, cfg, split, forget_ids, original)


def combine_eval(cfg: Config, split: str, forget_ids: list[str] | None, jobs: list[EvalJob], outs: list[dict],
                 retain_eval: dict | None) -> dict[str, MetricResult]:
    """The metrics from the jobs' outputs (in job order: a set's ranges concatenate in item order)."""
    tofu = load_tofu(cfg.data.tofu_dir)
    res: dict[str, MetricResult] = {}
    phase: dict[str, float] = {}
    parts: dict[str, list[dict]] = {}
    for job, out in zip(jobs, outs):
        if isinstance(job, SetJob):
            parts.setdefault(job.name, []).append(out)
    joined = {}
    for name, ps in parts.items():
        items = _set_items(tofu, cfg, name, split, forget_ids)
        gt = [g for p in ps for g in p["gt"]]
        phase[f"{name}_scoring"] = round(sum(p["scoring_s"] for p in ps), 1)
        joined[name] = (items, gt)
        if name == "holdout":
            continue
        para = None if any(p["para"] is None for p in ps) else [x for p in ps for x in p["para"]]
        pert = [x for p in ps for x in p["pert"]]
        gens = [x for p in ps for x in p["gens"]]
        ids = [q.id for q in items]
        rouge = rouge_l_recall(gens, [q.answer for q in items], ids=ids)
        res.update(split_metrics(name, gt_nll=[s.nll for s in gt], pert_nll=pert, para_nll=para,
                                 rouge_recall=list(rouge.per_item.values()), ids=ids))
        phase[f"{name}_generation"] = round(sum(p["generation_s"] for p in ps), 1)
    f_items, f_gt = joined["forget"]
    hold, h_gt = joined["holdout"]
    f_ids = [q.id for q in f_items]
    # token-wise metrics leave out the final (EOS) position, as open-unlearning does
    pred, labels = [s.argmax[:-1] for s in f_gt], [s.labels[:-1] for s in f_gt]
    res["exact_memorization"] = exact_memorization(pred, labels, ids=f_ids)
    res["extraction_strength"] = extraction_strength(pred, labels, ids=f_ids)
    res.update(mia_results(f_gt, h_gt, [q.answer for q in f_items], [q.answer for q in hold]))
    ref = retain_eval or {k: v.to_dict() for k, v in res.items()}
    ref_tr, ref_auc = reference_on(ref, f_ids)
    res["privleak"] = privleak(res["mia_min_k"].value, ref_auc)
    res["forget_quality"] = forget_quality(res["forget_truth_ratio"], ref_tr)
    res["model_utility"] = model_utility(res)
    for job, out in zip(jobs, outs):
        if isinstance(job, PaperJob):
            res[job.key] = out["result"]
            phase[job.phase] = round(out["s"], 1)
    res["_meta"] = MetricResult("_meta", None, None, {"split": split, "n_forget": len(f_items),
                                                      "forget_subset": forget_ids is not None,
                                                      "max_items": cfg.eval.max_items, "phase_s": phase})
    return res


def mia_results(forget, holdout, forget_texts, holdout_texts) -> dict[str, MetricResult]:
    """LOSS, ZLib, Min-k% and Min-k%++ (k=0.4) forget-vs-holdout AUCs from ``ItemScore``s. LOSS and
    ZLib use the mean NLL over all answer tokens, the Min-k variants leave out the EOS position."""
    def scores(items, texts):
        nll = [s.nll for s in items]
        lp, mu, sd = ([getattr(s, a)[:-1] for s in items] for a in ("logprobs", "mu", "sigma"))
        return {"mia_loss": loss_scores(nll), "mia_zlib": zlib_scores(nll, texts),
                "mia_min_k": min_k_scores(lp), "mia_min_k_plus_plus": min_k_plus_plus_scores(lp, mu, sd)}

    f, h = scores(forget, forget_texts), scores(holdout, holdout_texts)
    return {k: mia(k, f[k], h[k]) for k in f}


def _subset(items, ids: list[str], split: str) -> list:
    want = set(ids)
    got = [q for q in items if q.id in want]
    missing = sorted(want - {q.id for q in got})
    if missing:
        raise EvalError(f"forget rows {missing[:10]} are not in {split}")
    return got


def reference_on(ref: dict, ids: list[str]) -> tuple[list[float], float]:
    """The retain model's forget truth ratios and Min-k AUC (forget vs holdout) on rows ``ids``
    (all of its rows when they are the same set)."""
    tr = ref["forget_truth_ratio"]["per_item"]
    if not isinstance(tr, dict) or list(tr) == list(ids):
        return _truth_ratios(ref), ref["mia_min_k"]["value"]
    missing = [i for i in ids if i not in tr]
    if missing:
        raise EvalError(f"the retain model's reference evaluation has no rows {missing[:10]}")
    pos = {k: j for j, k in enumerate(tr)}
    extra = ref["mia_min_k"]["extra"]
    f_scores = [extra["forget_scores"][pos[i]] for i in ids]
    return [tr[i] for i in ids], auc(f_scores, extra["holdout_scores"], "mia_min_k")


def _truth_ratios(eval_dict: dict) -> list[float]:
    v = eval_dict["forget_truth_ratio"]["per_item"]
    return list(v.values()) if isinstance(v, dict) else list(v)


def utility_for_gur(results: dict) -> float:
    """Arithmetic mean of the retain + world-facts utility components (the paper's held-out
    non-target task). Arithmetic, not harmonic: one zero component (a small model's world-facts
    ROUGE) must not zero the whole ratio."""
    vals = [(results[k].value if isinstance(results[k], MetricResult) else results[k]["value"]) for k in GUR_KEYS]
    return sum(vals) / len(vals)


def add_gur(res: dict[str, MetricResult], target_eval: dict | None) -> dict[str, MetricResult]:
    """Add GUR = utility(model) / utility(target) (``target_eval`` None: the target itself, 1.0;
    None with a note when the target's utility is 0)."""
    mine = utility_for_gur(res)
    ref = utility_for_gur(target_eval) if target_eval else mine
    value = 1.0 if target_eval is None else (gur(mine, ref) if ref > 0 else None)
    res["gur"] = MetricResult("gur", value, None, {"utility": mine, "target_utility": ref, "keys": GUR_KEYS})
    return res


def summarize(full: dict) -> dict:
    """TOFU_SUMMARY from a TOFU_EVAL dict: key -> aggregate, plus ``<key>_log10`` below 1e-3."""
    summary = {}
    for k, r in full.items():
        if k.startswith("_"):
            continue
        summary[k] = r["value"]
        if r["value"] is not None and r.get("value_log10") is not None and r["value"] < 1e-3:
            summary[f"{k}_log10"] = r["value_log10"]
    return dict(sorted(summary.items()))


def to_json(results: dict[str, MetricResult]) -> tuple[dict, dict]:
    """(TOFU_EVAL: every metric with per-item values, TOFU_SUMMARY)."""
    full = {k: r.to_dict() for k, r in results.items()}
    return full, summarize(full)


def write(results: dict[str, MetricResult], out: str | Path) -> tuple[Path, Path]:
    full, summary = to_json(results)
    out = Path(out)
    return write_json(out / "TOFU_EVAL.json", full), write_json(out / "TOFU_SUMMARY.json", summary)
