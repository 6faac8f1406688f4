"""What the pipeline records about every deletion request: the MLflow runs (decoder and
unlearning experiments), the registry versions and aliases, and the DVC md5 of every input and
output. Only ids, hashes, configuration and metrics are logged, never forget-set text.

Record of one request (experiment ``tracking.unlearning_experiment``, run ``<request_id>-<method>``):
tags ``request_id``, ``method``, ``git_sha``, ``config_hash``, ``forget_rows_hmac``, ``status``,
``decoder_used`` / ``decoder_trained_weights`` (the decode really applied) and ``unused_settings``;
params: method, eta, lora / unlearn config, forget row ids digest; metrics: NLLs before/after, wall
time, every TOFU / paper metric; artifacts: ``eval/TOFU_EVAL.json`` (per item), ``TOFU_SUMMARY.json``,
``plots/metrics.png``, ``gate/decision.json``, ``dvc/md5s.json``; the unlearned model as a new
version of the registered target model (alias ``candidate``; ``champion`` only if the gate passed).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from r2f.config import Config
from r2f.digest import weights_sha256
from r2f.engine.api import reference_eval
from r2f.engine.unlearn.unused import unused_settings
from r2f.engine.used import has_trained_weights
from r2f.governance.tracking_setup import make_tracker
from r2f.governance.versioning import find_root, lock_md5s


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_hash(cfg: Config) -> str:
    return cfg.section_hash("data", "models", "lora", "paraphrase", "decoder", "unlearn", "eval", "gate")


def dvc_md5s(cfg: Config) -> dict[str, str]:
    root = find_root()
    return lock_md5s(root) if root else {}


def log_decoder_run(tracker, cfg: Config, rep: dict, decoder_dir: Path, log) -> None:
    """One run per decoder config hash in the decoder experiment. The decoder is registered (model
    ``tracking.decoder_model_name``) only when it has trained weights; otherwise the run keeps its
    decoder.json (the fitted token weighting) as an artifact, is tagged ``registered: false``, and
    names the decoder settings that had no effect (``unused_settings``)."""
    key = Path(rep["decoder_dir"]).name
    if tracker.find_run(cfg.tracking.decoder_experiment, {"decoder_hash": key}):
        return
    trained = has_trained_weights(rep)
    unused = [k for k in unused_settings(cfg, "r2f") if k.startswith(("decoder.", "lora."))]
    tags = {"decoder_hash": key, "git_sha": git_sha(), "trained_weights": str(trained).lower(),
            "registered": str(trained).lower(), "unused_settings": ",".join(unused) or "none"}
    with tracker.start_run(cfg.tracking.decoder_experiment, f"decoder-{key[:12]}", tags):
        tracker.log_params({"decoder": cfg.decoder.model_dump(mode="json"), "lora": cfg.lora.model_dump(mode="json"),
                            "proxy": cfg.models.proxy.arch.model_dump(mode="json")})
        curve = rep.get("loss_curve") or []
        for i, v in enumerate(curve):
            tracker.log_metrics({"train_loss": v}, step=i)
        tracker.log_metrics({k: v for k, v in rep.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        note = decoder_note(key, rep)
        tracker.describe_run(note)
        if trained:
            tracker.log_model_dir(str(decoder_dir), "decoder", registered_name=cfg.tracking.decoder_model_name,
                                  kind="decoder", description=note)
        else:
            tracker.log_dict(json.loads((Path(decoder_dir) / "decoder.json").read_text()), "decoder/decoder.json")
    log(f"decoder logged to MLflow experiment {cfg.tracking.decoder_experiment}"
        + ("" if trained else " (no trained weights: not registered)"))


def decoder_note(key: str, rep: dict) -> str:
    """What a decoder version is, honestly: trained weights or not."""
    pairs, steps = rep.get("pairs", 0), rep.get("steps", 0)
    text = (f"R2F gradient decoder {key[:12]} (LoRA A init: {rep.get('a_init')}, proxy "
            f"{rep.get('proxy_layers')} layers x hidden {rep.get('proxy_hidden')}); training pairs {pairs}, steps {steps}.")
    if not steps:
        text += (" No trained weights: with this LoRA init the decode is the rank-r projection onto the "
                 "item's activation directions; only the token weighting was fitted on the proxy.")
    return text


def _request_text(info: dict, method: str) -> str:
    return (f"request {info['request_id']}: {info['n_rows']} forget rows (hmac "
            f"{info['rows_hmac'][:12]}), method {method}")


def run_note(info: dict, rep: dict) -> str:
    start = rep.get("start_model") or {}
    return (f"Deletion {_request_text(info, rep['method'])}, eta {rep['eta']}, unlearned from "
            f"{start.get('source', 'target')} version {start.get('version')}; evaluated on {info['eval_split']}.")


def start_unlearning_run(tracker, cfg: Config, info: dict, rep: dict) -> str | None:
    """Open the request's run in the unlearning experiment, log the unlearning step; returns the run id."""
    tags = {"request_id": info["request_id"], "method": rep["method"], "git_sha": git_sha(),
            "config_hash": config_hash(cfg), "forget_rows_hmac": info["rows_hmac"],
            "eval_split": info["eval_split"], "status": "unlearned",
            "start_model_version": str((rep.get("start_model") or {}).get("version")),
            "start_model_source": (rep.get("start_model") or {}).get("source", "target"),
            "request_sha256": info.get("source_sha256", ""), "request_source": info.get("source", ""),
            "decoder_hash": rep.get("decoder_hash", ""),
            "decoder_used": (rep.get("decoder") or {}).get("used") or "none",
            "decoder_trained_weights": str(bool((rep.get("decoder") or {}).get("trained_weights"))).lower(),
            "unused_settings": ",".join(rep.get("unused_settings") or []) or "none"}
    with tracker.start_run(cfg.tracking.unlearning_experiment, f"{info['request_id']}-{rep['method']}", tags) as run_id:
        tracker.describe_run(run_note(info, rep))
        tracker.log_params({"method": rep["method"], "eta": rep["eta"], "n_forget_rows": info["n_rows"],
                            "lora": cfg.lora.model_dump(mode="json"),
                            "unlearn": cfg.unlearn.model_dump(mode="json")})
        metrics = {f"nll_before.{k}": v for k, v in rep["nll_before"].items()}
        metrics.update({f"nll_after.{k}": v for k, v in rep["nll_after"].items()})
        metrics.update({"wall_s": rep["wall_s"], "peak_rss_mb": rep["peak_rss_mb"]})
        tracker.log_metrics(metrics)
        tracker.log_dict({k: rep[k] for k in ("eta_trials", "info", "forget_ids_sha256", "decoder", "unused_settings")
                          if k in rep},
                         "unlearn/report.json")
        return run_id


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE", "model_utility", "usr",
                        "gur", "rap", "extraction_strength") if isinstance(summary.get(k), (int, float))]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(keys, [summary[k] for k in keys])
    ax.set_title(f"forget_quality = {summary.get('forget_quality', float('nan')):.3g}")
    ax.tick_params(axis="x", rotation=35)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_evaluation(tracker, cfg: Config, run_id: str | None, eval_dir: Path) -> None:
    summary = json.loads((eval_dir / "TOFU_SUMMARY.json").read_text())
    with tracker.start_run(cfg.tracking.unlearning_experiment, run_id=run_id):
        tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        tracker.log_artifact(str(eval_dir / "TOFU_EVAL.json"), "eval")
        tracker.log_artifact(str(eval_dir / "TOFU_SUMMARY.json"), "eval")
        png = eval_dir / "metrics.png"
        if not png.exists():
            _plot(summary, png)
        tracker.log_artifact(str(png), "plots")
        tracker.set_tags({"status": "evaluated"})


def champion_utility(cfg: Config, split: str) -> float | None:
    """Model utility of the current champion: the registered champion's recorded evaluation (utility
    does not depend on the forget split), else (the untouched target is champion, or nothing is
    registered yet) the target's reference evaluation on ``split``."""
    tracker = make_tracker(cfg)
    got = tracker.champion_summary(cfg.tracking.target_model_name, split) if tracker.active else None
    if got and isinstance(got.get("model_utility"), (int, float)):
        return float(got["model_utility"])
    return base_utility(cfg, split)


def base_utility(cfg: Config, split: str) -> float:
    """Model utility of the base target (the untouched embedded target, the first champion of every
    chain of deletions): its reference evaluation on ``split``."""
    return reference_eval(cfg, "target", split)["model_utility"]["value"]


def gate_note(decision: dict) -> str:
    if decision["passed"]:
        return "Gate PASSED: every rule met."
    return "Gate REJECTED: " + "; ".join(decision.get("reasons") or [])[:1500]


def log_gate(tracker, run_id: str | None, decision: dict, note: str | None = None) -> None:
    """The gate's decision on the request's run; ``note``: the run's description so far, which the
    decision is appended to."""
    with tracker.start_run(None, run_id=run_id):
        if note:
            tracker.describe_run(f"{note} {gate_note(decision)}")
        tracker.log_metrics({f"gate.{r['name']}": r["value"] for r in decision["rules"]})
        tracker.set_tags({"gate.passed": str(decision["passed"]).lower(), "status": "gated"})
        tracker.log_dict(decision, "gate/decision.json")


def register_and_promote(tracker, cfg: Config, target_dir: Path, model_dir: Path, run_id: str | None,
                         decision: dict, info: dict, fence=None) -> dict:
    """Base target as version 1 / champion (once); the unlearned model as a new version with alias
    ``candidate``; ``champion`` moves to it only if the gate passed. Logs the DVC md5s."""
    name = cfg.tracking.target_model_name
    md5s = dvc_md5s(cfg)
    with tracker.start_run(None, run_id=run_id):
        tracker.log_dict(md5s, "dvc/md5s.json")
        tracker.log_params({f"dvc.{k}": v for k, v in md5s.items()})
    outcome = ("promoted to champion" if decision["passed"] else "rejected by the gate; champion unchanged")
    description = f"Candidate for deletion {_request_text(info, cfg.unlearn.method)}; {outcome}. {gate_note(decision)}"
    res = tracker.register_candidate(name, str(target_dir), str(model_dir), run_id, decision,
                                     {"request_id": info["request_id"], "forget_rows_hmac": info["rows_hmac"],
                                      "weights_sha256": weights_sha256(model_dir)},
                                     cfg.tracking.unlearning_experiment, description=description, fence=fence)
    return {"registered_model": name, **res, "passed": decision["passed"], "request_id": info["request_id"]}
