"""Reliability and security (issue #8): bad inputs, kill points, concurrent runs, forget-text copies.

On a fresh tiny project (real Prefect, MLflow sqlite registry, DVC repo, GX suites):
1. every case of tests/data/bad_inputs/cases.yaml through its real entry points: rejected? with a
   message naming the problem? state changed (registry, MLflow runs, DVC, inbox, model outs)?
2. kill points: `r2f run` SIGKILLed (its process group, Prefect server included) right after each
   pipeline stage finishes, then run again; plus a promotion cut short inside `promote`. Recovered =
   the rerun exits 0, the request has exactly one final decision in the registry, no MLflow run of it
   is left RUNNING, and the champion alias resolves to a model that loads.
3. concurrency: two `r2f run` started at once on the same project, `--races` times: promotions per
   race (goal 1) and the other run's refusal.
4. the forget set's questions, answers and the subject searched in the MLflow database and artifact
   store, Prefect's state, the inbox, the run logs and the audit reports (goal 0 occurrences).
5. shredding (issue #22): on a fresh project, a request through one scheduled tick, every file under
   the state folder and the DVC cache searched for its questions, answers and 40-character prefixes
   (before; the encrypted forget set included), a control that must find them, `r2f retention
   enforce` past the window, the same search (after, the subject too), and `r2f audit`.
6. tampering: that request's forget-quality metric rewritten in the tracking database, `r2f audit`.
7. cross-host races: `--host-races` races of the promote stage between two state folders sharing a
   PostgreSQL tracking store (goal: one promotion each), and a control race without the lease.
Writes bench/results/reliability.json and .md. --quick: the request and params cases, 2 kill points,
1 race.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from common import PIPELINE, ROOT, parser, setup, write

sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--races", type=int, default=2)
    p.add_argument("--host-races", type=int, default=5, help="cross-host promotion races (PostgreSQL)")
    args = p.parse_args()
    setup()
    from bad_input_lib import cases, run_case
    from conftest import TINY, tiny_config
    from reliability_lib import (
        EASY_GATE,
        FAST_EVAL,
        check_request,
        cut_promotion,
        forget_text_hits,
        forget_texts,
        make_project,
        r2f,
        read_request_id,
        registry,
        run_and_kill,
        run_to_end,
        shredding_check,
        tamper_check,
        write_request,
    )

    from r2f.governance.pipeline import NAMES

    t_all = time.perf_counter()
    rows, logs = [], {}
    with tempfile.TemporaryDirectory(prefix="r2f-reliability-") as tmp:
        tmp = Path(tmp)
        # 1. bad inputs, on a project with nothing run yet
        proj = make_project(tmp / "bad", TINY)
        corpus = [c for c in cases() if not args.quick or c["kind"] in ("request", "params")]
        bad = [run_case(c, proj, tmp / "work") for c in corpus]
        for r in bad:
            print(f"{r['id']}: rejected={r['rejected']} message_ok={r['message_ok']} changes={r['state_changes']}",
                  flush=True)
        rows.append({"check": "bad inputs", "tried": len(bad), "ok": sum(r["rejected"] and r["message_ok"] for r in bad),
                     "rejected": sum(r["rejected"] for r in bad), "message_names_problem": sum(r["message_ok"] for r in bad),
                     "state_changes": sum(bool(r["state_changes"]) for r in bad)})

        # 2. kill points, on a project with a first request done (models, decoder, registry warm)
        proj = make_project(tmp / "crash", {**TINY, **FAST_EVAL, **EASY_GATE})
        rc, logs["warm-up"] = run_to_end(proj, "run")
        if rc != 0:
            raise SystemExit(f"warm-up run failed:\n{logs['warm-up'][-4000:]}")
        stages = ["unlearn", "gate"] if args.quick else list(NAMES)
        qids = [f"tofu-{3960 + i:04d}" for i in range(40)]
        kills = []
        for i, stage in enumerate(stages):
            rid = f"req-kill-{stage}"
            req = write_request(proj, rid, [qids[i]])
            # the console's line for the stage, also when Prefect served it from its cache
            killed, logs[f"kill-{stage}"] = run_and_kill(proj, rf"stage {stage} finished", "--set",
                                                         f"pipeline.request={req}")
            rc, logs[f"rerun-{stage}"] = run_to_end(proj, "run", "--set", f"pipeline.request={req}")
            chk = check_request(proj, rid)
            # exit 0 promoted or 3 rejected by the gate: both are a finished request
            ok = (killed and rc in (0, 3) and chk["final_decisions"] == 1 and chk["running_runs"] == 0
                  and chk["champion_loads"])
            kills.append({"point": f"after {stage}", "killed": killed, "rerun_rc": rc, **chk, "recovered": ok})
            print(f"kill after {stage}: {kills[-1]}", flush=True)
        cut = cut_promotion(proj, "req-kill-inside-promote", [qids[len(stages)]])
        mine = [v for v in cut["after"] if v["request_id"] == "req-kill-inside-promote"]
        ok = cut["rc"] in (0, 3) and len(cut["after"]) == len(cut["before"]) and len(mine) == 1 and mine[0]["decision"]
        kills.append({"point": "inside promote (version registered, nothing after)", "killed": True,
                      "rerun_rc": cut["rc"], "versions": mine, "recovered": bool(ok)})
        logs["cut-promote"] = cut["output"]
        rows.append({"check": "kill points", "tried": len(kills), "ok": sum(k["recovered"] for k in kills)})

        # 3. concurrency
        races = []
        for j in range(1 if args.quick else args.races):
            reqs = [write_request(proj, f"req-race-{j}-{s}", [qids[30 + 2 * j + k]]) for k, s in enumerate("ab")]
            before = registry(proj)
            procs = [r2f(proj, "run", "--set", f"pipeline.request={r}") for r in reqs]
            outs = [pr.communicate(timeout=1800)[0] for pr in procs]
            for s, o in zip("ab", outs):
                logs[f"race-{j}-{s}"] = o
            new = [v for v in registry(proj) if v not in before and (v["request_id"] or "").startswith(f"req-race-{j}-")]
            busy = sum("another process holds" in o for o in outs)
            races.append({"race": j, "exit_codes": [pr.returncode for pr in procs], "promotions": sum(
                v["decision"] == "promoted" for v in new), "refused_busy": busy})
            print(f"race {j}: {races[-1]}", flush=True)
        rows.append({"check": "concurrent runs", "tried": len(races),
                     "ok": sum(r["promotions"] == 1 and r["refused_busy"] == 1 for r in races),
                     "promotions": sum(r["promotions"] for r in races)})

        # 4. no new copies of the forgotten text
        for fmt in ("md", "json", "html"):
            _, logs[f"audit-{fmt}"] = run_to_end(proj, "audit", "req-0001-forget01", "--format", fmt)
        texts = forget_texts(proj, "requests/forget01-authors.yaml")
        hits = forget_text_hits(proj, texts, logs)
        rows.append({"check": "forget-text occurrences", "tried": len(texts), "ok": int(not hits),
                     "occurrences": len(hits)})

        # 5. crypto-shredding
        shred_proj = make_project(tmp / "shred", {**TINY, **FAST_EVAL, **EASY_GATE})
        shred = shredding_check(shred_proj)
        print(f"shredding: { {k: v for k, v in shred.items() if not k.endswith(('_log', '_tail'))} }", flush=True)
        rows.append({"check": "shredding", "tried": 1, "shredded": shred["shredded"],
                     "ok": int(shred["shredded"] == 1 and not shred["before"] and not shred["after"]
                               and shred["control_hits"] > 0 and shred["audit_verdict"] == "VERIFIED"),
                     "occurrences_before": len(shred["before"]), "occurrences_after": len(shred["after"]),
                     "control_hits": shred["control_hits"], "strings": shred["searched_strings"],
                     "audit_after": shred["audit_verdict"], "audit_not_run": len(shred["audit_not_run"] or [])})

        # 6. a rewritten MLflow row of the (promoted, shredded) request: the audit must fail (exit 4)
        tamper = tamper_check(shred_proj, read_request_id(shred_proj / "requests/forget01-authors.yaml"))
        print(f"tampering: {tamper}", flush=True)
        rows.append({"check": "tampering", "tried": 1, "audit_rc": tamper["audit_rc"],
                     "ok": int(tamper["audit_rc"] == 4 and tamper["names_seal"] and tamper["audit_rc_restored"] == 0)})
        # 7. one promotion across hosts: the real promote stage raced by two processes with separate state
        # folders sharing one PostgreSQL tracking store and registry (tests/lease_lib.py)
        from lease_lib import cross_host_races
        from pg_server import postgres_server

        from r2f.engine.zoo import ensure_models

        zoo = tiny_config(tmp / "zoo")
        target = ensure_models(zoo, log=lambda _m: None, splits=(zoo.data.forget_split,)).path("target")
        with postgres_server() as pg:
            xh = cross_host_races(pg, tmp / "hosts", target, races=args.host_races)
        xh.pop("hosts")
        print(f"cross-host races: {xh}", flush=True)
        rows.append({"check": "cross-host races", "tried": len(xh["races"]),
                     "ok": sum(r["promotions"] == 1 for r in xh["races"]),
                     "promotions": sum(r["promotions"] for r in xh["races"]),
                     "control_promotions": xh["control_without_lease"]["promotions"]})
    meta = {"bad_inputs": bad, "kill_points": kills, "races": races, "forget_text_hits": hits, "shredding": shred,
            "tampering": tamper, "cross_host": xh,
            "wall_s": round(time.perf_counter() - t_all, 1),
            "goals": {"bad inputs": "all rejected, message names the problem, 0 state changes",
                      "kill points": "all recovered", "concurrent runs": "exactly one promotion per race",
                      "forget-text occurrences": "0",
                      "shredding": "0 occurrences before (ciphertext) and after; the control finds them; audit VERIFIED",
                      "tampering": "the audit exits 4 naming the sealed lineage record; 0 once restored",
                      "cross-host races": "exactly one promotion per race (>= 5 races)"}}
    notes = [
        "bad inputs: tests/data/bad_inputs/cases.yaml (requests: inbox submit + prepare/validate stages; params: "
        "params loading; tofu: TOFU loading + prepare; model: model loading + the unlearn stage). State = registry "
        "versions/aliases/decisions, MLflow runs other than rejection records, dvc.lock and DVC cache, the inbox, "
        "the model-bearing stage outs.",
        "kill points: SIGKILL to `r2f run`'s process group when its log shows the stage's task finished (also when "
        "Prefect served it from its cache: train_models, train_decoder); then `r2f run` again on the same request "
        "(recovered: exit 0 or 3, one final decision, no RUNNING run, the champion loads). "
        "'inside promote': the version registered with its tags and nothing after it.",
        "concurrent runs: two `r2f run` (two requests) started together; the pipeline lock admits one, the other "
        "exits 2 naming the lock.",
        "forget-text occurrences: each question, answer (and 40-character prefix) and the subject, searched raw and "
        "JSON-escaped; the versioned forget set itself (pipeline/request, DVC cache/remote) is not searched.",
        "shredding: every file under the state folder (DVC remote, MLflow store, Prefect database, logs, inbox, keys, "
        "run folders, models) and the project's DVC cache, searched for each question, answer and 40-character "
        "prefix before `r2f retention enforce` (the forget set is AES-GCM ciphertext) and after it (the subject "
        "too); control_hits: the same search after writing the decrypted forget set under the state folder. "
        "audit_not_run: the checks that need the destroyed key.",
        "tampering: the shredded request's forget-quality metric rewritten in the sqlite tracking database "
        "(metrics and latest_metrics), then `r2f audit`; restored, then `r2f audit` again.",
        "cross-host races: two processes with separate state folders share one PostgreSQL server (started by the "
        "bench from Debian's package) as tracking store and registry, plus an artifact folder and DVC remote; each "
        "runs the real promote stage on a candidate unlearned from the same champion, started together. "
        "control_promotions: one more race with pipeline.lease false (2 = the race the lease prevents).",
    ]
    write("reliability", args, rows, ["check", "tried", "ok", "rejected", "message_names_problem", "state_changes",
                                      "promotions", "occurrences", "shredded", "occurrences_before",
                                      "occurrences_after", "control_hits", "audit_after", "audit_rc",
                                      "control_promotions"], notes, meta,
          deps=[*PIPELINE, "tests/reliability_lib.py", "tests/bad_input_lib.py", "tests/data/bad_inputs",
                "tests/lease_lib.py", "tests/pg_server.py"])


if __name__ == "__main__":
    main()
