"""The pipeline: one definition (``STAGES``, a :class:`Stage` record per stage), two runners.

``dvc.yaml`` is generated from ``STAGES`` (``r2f stage --dvc-yaml``; a test checks the committed
file matches) and runs each stage as ``r2f stage <name>``; the Prefect flow in ``flows/`` runs the
same :func:`run_stage` as tasks, with the retries, caching and ``dvc.lock`` wait the record declares.
A stage reads its inputs from the outs of earlier stages under ``<state_dir>/pipeline/`` and writes
its own outs atomically, so either runner can resume the other.

prepare → validate → train_models → train_decoder → unlearn → evaluate → gate → promote
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from r2f.atomic import atomic_dir
from r2f.config import Config
from r2f.engine.api import decoder_dir, ensure_decoder, evaluate_model, unlearn_model
from r2f.engine.data import N_AUTHORS, load_tofu
from r2f.engine.unlearn import method_config
from r2f.engine.zoo import ensure_models
from r2f.errors import R2FError
from r2f.governance.gate import decide
from r2f.governance.lineage import (
    base_utility,
    champion_utility,
    log_decoder_run,
    log_evaluation,
    log_gate,
    register_and_promote,
    run_note,
    start_unlearning_run,
)
from r2f.governance.privacy import KeyShredded, key_store, rows_hmac, write_forget_set
from r2f.governance.requests import (
    RequestError,
    author_indices,
    eval_split,
    read_request,
    resolve,
)
from r2f.governance.tracking_setup import make_tracker
from r2f.governance.validation import ValidationError, check, validate_pipeline_data, validate_request

Log = Callable[[str], None]


class PipelineError(R2FError, RuntimeError):
    """A stage cannot run (missing input from an earlier stage, ...); the message says which."""


def stage_dir(cfg: Config, name: str) -> Path:
    """The folder of a stage's outs."""
    return Path(cfg.state_dir) / "pipeline" / get_stage(name).out


def dvc_yaml() -> str:
    """``dvc.yaml`` text for ``STAGES`` (values interpolated by DVC from params.yaml)."""
    import yaml

    stages = {s.name: {"cmd": f"r2f stage {s.name}", "deps": list(s.deps), "params": list(s.params),
                       "outs": list(s.outs)} for s in STAGES}
    head = ("# Generated from r2f/governance/pipeline.py STAGES by `r2f stage --dvc-yaml > dvc.yaml`; "
            "tests/test_pipeline.py checks it matches.\n")
    return head + yaml.safe_dump({"stages": stages}, sort_keys=False)


def _json(path: Path) -> dict:
    if not path.is_file():
        raise PipelineError(f"{path}: missing; run the earlier stages first (`r2f run` or `dvc repro`)")
    return json.loads(path.read_text())


def _write(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a folder, hard-linking files when the filesystem allows (artifacts are immutable)."""
    def copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, copy_function=copy)


def request_info(cfg: Config) -> dict:
    return _json(stage_dir(cfg, "prepare") / "request.json")


def request_rows(cfg: Config, info: dict) -> list[str] | None:
    """The request's rows when they are a strict part of its evaluation split (forget metrics are
    then computed on them alone), ``None`` when the request is the whole split."""
    split_ids = [q.id for q in load_tofu(cfg.data.tofu_dir).split(info["eval_split"])]
    return None if set(info["item_ids"]) == set(split_ids) else list(info["item_ids"])


def forget_items(cfg: Config) -> list:
    info = request_info(cfg)
    full = {q.id: q for q in load_tofu(cfg.data.tofu_dir).split("full")}
    return [full[i] for i in info["item_ids"]]


# -- stages -----------------------------------------------------------------------------------------
def prepare(cfg: Config, log: Log, progress=None) -> dict:
    import hashlib

    src = Path(cfg.pipeline.request)
    req = read_request(src)
    tofu = load_tofu(cfg.data.tofu_dir)
    known = {q.id for q in tofu.split("full")}
    qids = req.selectors.question_ids
    unknown = sorted(set(qids) - known)
    # selectors that match nothing are left out here and reported by the GX request suite (validate)
    authors = [a for a in req.selectors.authors
               if isinstance(a, int) and 0 <= a < N_AUTHORS or isinstance(a, str) and len(tofu.authors_named(a)) == 1]
    sel = req.selectors.model_copy(update={"question_ids": tuple(i for i in qids if i in known),
                                           "authors": tuple(authors)})
    resolved = req.model_copy(update={"selectors": sel})
    items = resolve(resolved, tofu) if sel.authors or sel.question_ids else []
    try:
        split = eval_split(items) if items else None
    except RequestError:
        split = None
    try:  # the request's key (r2f.governance.privacy): created when the request first enters the system
        key = key_store(cfg).ensure(req.request_id)
    except KeyShredded as exc:
        raise PipelineError(f"{src}: {exc}; a shredded request is not processed again") from None
    info = {"request_id": req.request_id, "created_at": str(req.created_at), **req.digests(key),
            "authors": author_indices(resolved, tofu), "requested_question_ids": list(qids),
            "unknown_question_ids": unknown, "item_ids": [q.id for q in items], "n_rows": len(items),
            "rows_hmac": rows_hmac(key, items), "eval_split": split, "source": str(src),
            "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    with atomic_dir(stage_dir(cfg, "prepare")) as tmp:
        write_forget_set(key, req.request_id, items, tmp / "forget.jsonl.enc")  # AES-GCM: no plaintext at rest
        _write(tmp / "request.json", info)
    log(f"request {req.request_id}: {len(items)} rows (hmac {info['rows_hmac'][:12]}), "
        f"evaluated on {split}")
    return {k: info[k] for k in ("request_id", "n_rows", "rows_hmac", "eval_split")}


def validate(cfg: Config, log: Log, progress=None) -> dict:
    """GX suites; on failure the reports are kept (``validation/``, ``passed: false``), a rejected
    MLflow run records them, and ``ValidationError`` stops the pipeline before any model is touched."""
    info = request_info(cfg)
    tofu = load_tofu(cfg.data.tofu_dir)
    out = stage_dir(cfg, "validate")
    req = read_request(cfg.pipeline.request).to_dict()
    full = tofu.split("full")
    reports = [validate_request(req, {q.id for q in full}, set(range(200)), tofu.authors_named)]
    items = forget_items(cfg)
    failed = None
    with atomic_dir(out) as tmp:  # the outs (reports + result.json) replace the old ones in one rename
        try:
            if items:  # an empty forget set is already a failure of the request suite
                try:
                    reports += validate_pipeline_data(tofu, items, cfg.validation)
                except ValidationError as exc:
                    reports += exc.reports
            check(reports, tmp)
        except ValidationError as exc:
            failed = ValidationError(str(exc).replace(str(tmp), str(out)), exc.failures, exc.reports)
        _write(tmp / "result.json", {"passed": failed is None, "request_id": info["request_id"],
                                     "suites": {r.suite: r.success for r in reports}})
    if failed is not None:
        _track_rejected(cfg, info, out)
        raise ValidationError(f"request {info['request_id']}: data validation failed, nothing was changed "
                              f"(GX results in {out}):\n{failed}", failed.failures, reports) from None
    log(f"validation passed: {len(reports)} suites")
    return _json(out / "result.json")


def _track_rejected(cfg: Config, info: dict, out: Path) -> None:
    tr = make_tracker(cfg)
    with tr.start_run(cfg.tracking.unlearning_experiment, f"{info['request_id']}-rejected",
                      {"request_id": info["request_id"], "status": "rejected_data"}):
        for f in sorted(out.glob("*.json")):
            tr.log_artifact(str(f), "validation")


def train_models(cfg: Config, log: Log, progress=None) -> dict:
    split = request_info(cfg)["eval_split"]
    models = ensure_models(cfg, log, progress, splits=(split,))
    with atomic_dir(stage_dir(cfg, "train_models")) as tmp:
        for name in ("tokenizer", "target", "proxy", f"retain-{split}"):
            if name == "tokenizer" and not (models.root / name).is_dir():
                continue  # a pretrained world's tokenizer ships inside each model folder
            _link_tree(models.root / name, tmp / name)
        _write(tmp / "models.json", {"config_hash": models.root.name, "eval_split": split})
    return {"config_hash": models.root.name, "eval_split": split}


def train_decoder(cfg: Config, log: Log, progress=None) -> dict:
    # the decoder the configured method uses: a named mode (r2f_paper) sets its own LoRA init and decoder
    cfg = method_config(cfg)
    rep = ensure_decoder(cfg, log, progress)
    with atomic_dir(stage_dir(cfg, "train_decoder")) as tmp:
        for f in Path(rep["decoder_dir"]).iterdir():
            shutil.copy2(f, tmp / f.name)
    _track_decoder(cfg, rep, log)
    return {k: v for k, v in rep.items() if not isinstance(v, (list, dict))}


def _track_decoder(cfg: Config, rep: dict, log: Log) -> None:
    """One run per decoder (config hash) in the decoder experiment, the decoder registered."""
    log_decoder_run(make_tracker(cfg), cfg, rep, stage_dir(cfg, "train_decoder"), log)


def unlearn(cfg: Config, log: Log, progress=None, mapper=None) -> dict:
    info = request_info(cfg)
    if not _json(stage_dir(cfg, "validate") / "result.json").get("passed"):
        raise PipelineError(f"request {info['request_id']}: validation did not pass; nothing unlearned")

    out = stage_dir(cfg, "unlearn")
    tracker = make_tracker(cfg)
    # model + report replace the old outs in one rename: a run killed midway leaves the old ones
    with atomic_dir(out) as new, tempfile.TemporaryDirectory(dir=Path(cfg.state_dir)) as tmp:
        start = start_model(cfg, tracker, Path(tmp), log)
        rep = unlearn_model(cfg, forget_split=info["eval_split"], model_path=start["path"],
                  out=new / "model", log=log, progress=progress, forget_items=forget_items(cfg), mapper=mapper)
        rep["request_id"] = info["request_id"]
        rep["decoder_hash"] = decoder_dir(method_config(cfg)).name  # the decoder the method ran with
        rep["start_model"] = {k: v for k, v in start.items() if k != "path"}
        # promote refuses to move champion if it moved since now (another host's deletion)
        rep["champion_at_start"] = tracker.alias_version(cfg.tracking.target_model_name, "champion")
        rep["mlflow_run_id"] = start_unlearning_run(tracker, cfg, info, rep)
        _write(new / "report.json", rep)
    return {k: rep[k] for k in ("method", "eta", "wall_s", "mlflow_run_id")}


def start_model(cfg: Config, tracker, tmp: Path, log: Log) -> dict:
    """The model a request is unlearned from: the registry's champion (``pipeline.start_from:
    champion``, once one exists that is not the untouched target) or the embedded target."""
    target = {"path": stage_dir(cfg, "train_models") / "target", "version": None, "role": "base_target",
              "source": "target"}
    if cfg.pipeline.start_from != "champion":
        return target
    champ = tracker.champion_model(cfg.tracking.target_model_name, tmp, skip_roles=("base_target",))
    if champ is None or champ["role"] == "base_target":
        return {**target, "version": champ and champ["version"]}
    log(f"unlearning from the champion, {cfg.tracking.target_model_name} version {champ['version']}")
    return {**champ, "source": "champion"}


def evaluate(cfg: Config, log: Log, progress=None, mapper=None) -> dict:
    info = request_info(cfg)
    rep = _json(stage_dir(cfg, "unlearn") / "report.json")
    with atomic_dir(stage_dir(cfg, "evaluate")) as tmp:
        res = evaluate_model(cfg, stage_dir(cfg, "unlearn") / "model", info["eval_split"], out=tmp,
                             log=log, progress=progress, forget_ids=request_rows(cfg, info), mapper=mapper)
    log_evaluation(make_tracker(cfg), cfg, rep.get("mlflow_run_id"), stage_dir(cfg, "evaluate"))
    return res["summary"]


def gate(cfg: Config, log: Log, progress=None) -> dict:
    info = request_info(cfg)
    summary = _json(stage_dir(cfg, "evaluate") / "TOFU_SUMMARY.json")
    champ, base = champion_utility(cfg, info["eval_split"]), base_utility(cfg, info["eval_split"])
    decision = decide(summary, champ, cfg.gate, base).to_dict()
    decision["champion_model_utility"] = champ
    decision["base_model_utility"] = base
    with atomic_dir(stage_dir(cfg, "gate")) as tmp:
        _write(tmp / "decision.json", decision)
    rep = _json(stage_dir(cfg, "unlearn") / "report.json")
    log_gate(make_tracker(cfg), rep.get("mlflow_run_id"), decision, run_note(info, rep))
    log(f"gate {'PASSED' if decision['passed'] else 'FAILED'}" +
        ("" if decision["passed"] else ": " + "; ".join(decision["reasons"])))
    return decision


def promote(cfg: Config, log: Log, progress=None) -> dict:
    info = request_info(cfg)
    decision = _json(stage_dir(cfg, "gate") / "decision.json")
    rep = _json(stage_dir(cfg, "unlearn") / "report.json")
    tracker = make_tracker(cfg)
    with _promotion_lease(cfg, tracker) as fence:
        if fence is not None and "champion_at_start" in rep:
            now = tracker.alias_version(cfg.tracking.target_model_name, "champion")
            if now != rep["champion_at_start"]:
                from r2f.governance.lease import ChampionMoved

                raise ChampionMoved(f"request {info['request_id']}: champion moved from version "
                                    f"{rep['champion_at_start']} to {now} since its unlearning started (another "
                                    "run promoted); nothing promoted: run it again from the new champion")
        res = register_and_promote(tracker, cfg, stage_dir(cfg, "train_models") / "target",
                                   stage_dir(cfg, "unlearn") / "model", rep.get("mlflow_run_id"), decision, info,
                                   fence=fence)
        if tracker.active and rep.get("mlflow_run_id"):  # tamper evidence: the decided lineage, chained
            from r2f.governance.chain import seal

            res["lineage_seq"] = seal(cfg, tracker, rep["mlflow_run_id"], info["request_id"])["seq"]
    with atomic_dir(stage_dir(cfg, "promote")) as tmp:
        _write(tmp / "promotion.json", res)
    return res


@contextmanager
def _promotion_lease(cfg: Config, tracker):
    """The cross-host promotion lease (r2f.governance.lease) while the candidate is registered and the
    aliases move; yields its fence (None without tracking or with ``pipeline.lease: false``)."""
    from r2f.governance.lease import PromotionLease, lease_uri

    uri = lease_uri(cfg, tracker.uri) if tracker.active else None
    if uri is None:
        yield None
        return
    lease = PromotionLease(uri, cfg.tracking.target_model_name, cfg.pipeline.lease_ttl_s)
    with lease.hold() as token:
        yield lambda: lease.check(token)


P = "${state_dir}/pipeline"


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: what ``dvc.yaml``, the Prefect flow and ``r2f stage`` know about it."""
    name: str
    help: str
    fn: Callable  # (cfg, log, progress[, mapper]) -> a small JSON-able result
    out: str  # its folder under <state_dir>/pipeline/ (the stage's one out)
    reads: tuple[str, ...]  # earlier stages whose outs it reads
    params: tuple[str, ...]  # params.yaml keys it reads: whole sections ("gate") or dotted keys ("unlearn.objective")
    data: tuple[str, ...] = ()  # other inputs: paths (``${...}`` = params.yaml values, DVC templating)
    sharded: bool = False  # takes a mapper (r2f.engine.parallel): its shards may run elsewhere
    retries: int = 0  # the flow's retries (I/O-bound stages: files, MLflow registry)
    cached: bool = False  # the flow caches it by the hash of cache_params (the library caches its artifacts too)
    needs_lock: bool = False  # reads dvc.lock (the flow waits for the DVC records of earlier stages)

    @property
    def deps(self) -> tuple[str, ...]:
        return self.data + tuple(f"{P}/{get_stage(n).out}" for n in self.reads)

    @property
    def outs(self) -> tuple[str, ...]:
        return (f"{P}/{self.out}",)


STAGES: tuple[Stage, ...] = (
    Stage("prepare", "resolve the deletion request to concrete TOFU rows (the forget set)", prepare,
          out="request", reads=(), params=("pipeline",), data=("data/tofu", "${pipeline.request}"), retries=2),
    Stage("validate", "Great Expectations suites on the request, forget, retain and holdout data", validate,
          out="validation", reads=("prepare",), params=("validation",), data=("data/tofu",)),
    Stage("train_models", "tokenizer, target, proxy and the split's retain model (cached by config hash)",
          train_models, out="models", reads=("prepare",), params=("data", "models"), data=("data/tofu",),
          cached=True),
    # params: every key of the decoder's identity (r2f.engine.api.decoder_dir) besides the models'
    Stage("train_decoder", "fit the gradient decoder on the proxy (cached by config hash)", train_decoder,
          out="decoder", reads=("train_models",),
          params=("lora", "paraphrase", "decoder", "unlearn.method", "unlearn.objective", "unlearn.loss_tokens"),
          cached=True),
    Stage("unlearn", "apply the configured method to the target on the forget set", unlearn,
          out="unlearned", reads=("prepare", "validate", "train_models", "train_decoder"), params=("unlearn",),
          sharded=True),
    Stage("evaluate", "TOFU + paper metrics of the unlearned model (references cached)", evaluate,
          out="eval", reads=("unlearn", "train_models"), params=("eval",), sharded=True),
    Stage("gate", "promotion rules on the evaluation", gate, out="gate", reads=("evaluate",), params=("gate",)),
    Stage("promote", "register the candidate; move the champion alias only if the gate passed", promote,
          out="promotion", reads=("gate",), params=("tracking",), retries=2, needs_lock=True),
)
NAMES = tuple(s.name for s in STAGES)


def get_stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise PipelineError(f"unknown stage '{name}'; expected one of {', '.join(NAMES)}")


def cache_params(name: str) -> tuple[str, ...]:
    """The params.yaml keys a cached stage's result depends on: its own and those of the cached stages
    upstream of it (the decoder is fitted on the models), in stage order."""
    todo, seen = [name], set()
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(get_stage(n).reads)
    keys = [k for s in STAGES if s.name in seen and (s.cached or s.name == name) for k in s.params]
    return tuple(dict.fromkeys(keys))


def run_stage(cfg: Config, name: str, log: Log = print, progress=None, mapper=None) -> dict:
    """Run one stage. ``mapper`` (:mod:`r2f.engine.parallel`): where the shards of the sharded stages
    run; None (``r2f stage``, DVC): in this process."""
    import time

    s = get_stage(name)
    t0 = time.perf_counter()
    kwargs = {"mapper": mapper} if s.sharded and mapper is not None else {}
    res = s.fn(cfg, log, progress, **kwargs)  # every stage: (cfg, log, progress[, mapper])
    return {**res, "stage_wall_s": round(time.perf_counter() - t0, 2)}
