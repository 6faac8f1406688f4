"""Small pieces of the benches that decide what a table says: memory_phases' phase labelling,
selective's choice between a fresh and a stale table, selective_dev's explicit variants."""

from __future__ import annotations

import sys
import time
import types

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))


def test_phase_sampler_attributes_memory_to_the_running_phase():
    import numpy as np
    from memory_phases import PhaseSampler

    mod = types.ModuleType("fake_engine")

    def heavy():
        block = np.ones(300 * 2**20 // 8)  # 300 MB, touched
        time.sleep(0.3)
        return float(block[-1])

    def light():
        time.sleep(0.3)

    mod.heavy, mod.light = heavy, light
    sys.modules["fake_engine"] = mod
    try:
        sampler = PhaseSampler(period=0.01)
        sampler.wrap("fake_engine", "heavy", "big")
        sampler.wrap("fake_engine", "light", "small")
        sampler.wrap("fake_engine", "absent", "never")  # a function the module lacks is skipped
        with sampler:
            start = PhaseSampler.rss_mb()
            sampler.stack[:] = ["other"]
            mod.light()
            mod.heavy()
        rows = {r["phase"]: r for r in sampler.table(start)}
    finally:
        del sys.modules["fake_engine"]
    assert rows["big"]["above_start_mb"] >= 250
    assert rows["small"]["above_start_mb"] < 100
    assert rows["big"]["seconds"] >= 0.2 and rows["small"]["seconds"] >= 0.2
    assert "never" not in rows


def test_selective_keeps_a_fresh_row_over_a_stale_one():
    from selective import _freshest

    def row(method, stale, fq):
        return {"bench": "tofu-smollm2", "split": "forget01", "method": method, "seed": 0,
                "source_stale": stale, "forget_quality": fq}

    rows = _freshest([row("r2f_pc", True, 0.1), row("npo", True, 0.2), row("r2f_pc", False, 0.3),
                      row("npo", True, 0.4)])
    got = {r["method"]: r["forget_quality"] for r in rows}
    assert got == {"r2f_pc": 0.3, "npo": 0.4}  # fresh beats stale; between equals, the later table


def test_selective_dev_variants_name_every_setting_they_were_measured_with():
    from selective_dev import _MEASURED, _PC, VARIANTS

    for name, (method, over) in VARIANTS.items():
        if method != "r2f_pc" or name == "r2f_pc":
            continue
        missing = [k for k in _MEASURED if _PC + k not in over]
        assert not missing, f"{name} leaves {missing} to the current defaults"
    assert VARIANTS["r2f_pc"] == ("r2f_pc", {})  # the default itself follows params.yaml
    assert VARIANTS["r2f_pc_kfac_p05"][1][_PC + "steps"] == 3
