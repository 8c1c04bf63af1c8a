"""tools/mutate.py without running mutmut: sampling, statuses, the equivalents file and the report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vdpa_mutate_tool", ROOT / "tools" / "mutate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


mutate = _load()

MUTANTS = {
    **{f"models.virtio_net.device.x_f__mutmut_{i}": ("models/virtio_net/device.py", None) for i in range(60)},
    **{f"sim.pci.endpoint.x_g__mutmut_{i}": ("sim/pci/endpoint.py", None) for i in range(30)},
    **{f"backend.drivers.vdpa.x_h__mutmut_{i}": ("backend/drivers/vdpa.py", None) for i in range(10)},
}


def test_sample_is_proportional_exact_and_repeatable() -> None:
    sample = mutate.draw_sample(MUTANTS, 20, seed=3)
    assert len(sample) == 20 == len(set(sample))
    per = {p: sum(1 for n in sample if mutate.package_of(MUTANTS[n][0]) == p) for p in mutate.PACKAGES}
    assert per == {"models/virtio_net": 12, "sim/pci": 6, "backend/drivers": 2}
    assert mutate.draw_sample(MUTANTS, 20, seed=3) == sample
    assert mutate.draw_sample(MUTANTS, 20, seed=4) != sample
    assert mutate.draw_sample(MUTANTS, None, seed=3) == sorted(MUTANTS)
    assert mutate.draw_sample(MUTANTS, 1000, seed=3) == sorted(MUTANTS)


def test_statuses_of_mutmut_exit_codes() -> None:
    assert [mutate.status_of(c) for c in (1, 3, 0, 36, -24, 33, None, -11)] == [
        "killed", "killed", "survived", "timeout", "timeout", "no tests", "not checked", "suspicious"]
    with pytest.raises(mutate.MutateError, match="outside"):
        mutate.package_of("backend/vhost_user/server.py")


def test_equivalents_file_is_validated(tmp_path: Path) -> None:
    good = tmp_path / "eq.toml"
    good.write_text('[[equivalent]]\nmutant = "a__mutmut_1"\nline = "x = 1"\nreason = "dead store"\n')
    assert mutate.load_equivalents(good)["a__mutmut_1"].reason == "dead store"
    assert mutate.load_equivalents(tmp_path / "missing.toml") == {}
    bad = tmp_path / "bad.toml"
    bad.write_text('[[equivalent]]\nmutant = "a__mutmut_1"\nline = "x = 1"\n')
    with pytest.raises(mutate.MutateError, match="lacks reason"):
        mutate.load_equivalents(bad)
    bad.write_text('[[equivalent]]\nmutant = "a"\nline = "l"\nreason = "r"\n' * 2)
    with pytest.raises(mutate.MutateError, match="listed twice"):
        mutate.load_equivalents(bad)
    assert mutate.load_equivalents() is not None  # the committed file parses


def test_report_classifies_and_checks_equivalents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta = tmp_path / "mutants" / "models" / "virtio_net" / "device.py.meta"
    meta.parent.mkdir(parents=True)
    codes = {"m.x_f__mutmut_1": 1, "m.x_f__mutmut_2": 0, "m.x_f__mutmut_3": 0, "m.x_f__mutmut_4": 0,
             "m.x_f__mutmut_5": 33, "m.x_f__mutmut_6": None, "m.x_f__mutmut_7": 1}
    meta.write_text(json.dumps({"exit_code_by_key": codes}))
    diffs = {"m.x_f__mutmut_3": "-    return a\n+    return a or a\n", "m.x_f__mutmut_4": "+    y = 2\n"}
    monkeypatch.setattr(mutate, "mutant_diff", lambda tree, name: diffs.get(name, "+    changed\n"))
    eq = {
        "m.x_f__mutmut_3": mutate.Equivalent("m.x_f__mutmut_3", "return a or a", "same value"),
        "m.x_f__mutmut_4": mutate.Equivalent("m.x_f__mutmut_4", "y = 3", "stale"),
        "m.x_f__mutmut_7": mutate.Equivalent("m.x_f__mutmut_7", "changed", "wrongly listed"),
        "m.gone__mutmut_1": mutate.Equivalent("m.gone__mutmut_1", "z", "gone"),
    }
    report = mutate.build_report(tmp_path, sorted(codes), eq, started="now", minutes=2.0, sample=7, seed=1,
                                 complete=False)
    status = {r.name: r.status for r in report.results}
    assert status == {"m.x_f__mutmut_1": "killed", "m.x_f__mutmut_2": "survived", "m.x_f__mutmut_3": "equivalent",
                      "m.x_f__mutmut_4": "survived", "m.x_f__mutmut_5": "no tests", "m.x_f__mutmut_6": "not checked",
                      "m.x_f__mutmut_7": "killed"}
    assert len(report.equivalent_problems) == 3
    assert report.score(report.counts()) == pytest.approx(2 / 5)  # killed 2 of killed+survived 2+no tests 1
    assert report.mutants_per_minute() == pytest.approx(3.0)
    as_json, as_md = mutate.write_report(report, tmp_path / "out")
    data = json.loads(as_json.read_text())
    assert data["packages"]["models/virtio_net"]["equivalent"] == 1 and data["complete"] is False
    text = as_md.read_text()
    assert "| models/virtio_net | 2 | 2 | 1 | 0 | 1 | 0 | 1 | 40.0 % |" in text
    assert "stopped at the time budget" in text and "+    return a or a" in text


def test_only_selects_by_pattern_and_refuses_a_pattern_matching_nothing() -> None:
    names = ["a.x_f__mutmut_1", "a.x_f__mutmut_2", "b.x_g__mutmut_1"]
    assert mutate.select_only(names, ["a.*_2", "b.*"]) == ["a.x_f__mutmut_2", "b.x_g__mutmut_1"]
    with pytest.raises(mutate.MutateError, match="matches no mutant"):
        mutate.select_only(names, ["c.*"])


def test_paths_narrow_the_sample_to_files_and_refuse_a_pattern_matching_none() -> None:
    narrowed = mutate.in_paths(MUTANTS, ["sim/pci/*", "backend/drivers/vdpa.py"])
    assert {v[0] for v in narrowed.values()} == {"sim/pci/endpoint.py", "backend/drivers/vdpa.py"}
    assert len(narrowed) == 40
    sample = mutate.draw_sample(narrowed, 8, seed=5)
    assert len(sample) == 8 and all(n in narrowed for n in sample)
    with pytest.raises(mutate.MutateError, match="matches no mutated file"):
        mutate.in_paths(MUTANTS, ["models/virtio_net/split_engine.py"])


def test_replay_takes_the_survivors_of_a_report(tmp_path: Path) -> None:
    report = tmp_path / "mutation.json"
    report.write_text(json.dumps({"mutants": [
        {"name": "a__mutmut_2", "status": "survived"}, {"name": "a__mutmut_1", "status": "killed"},
        {"name": "b__mutmut_1", "status": "suspicious"}, {"name": "c__mutmut_1", "status": "equivalent"}]}))
    assert mutate.survivors_of(report) == ["a__mutmut_2", "b__mutmut_1"]
    report.write_text("{}")
    with pytest.raises(mutate.MutateError, match="not a mutation report"):
        mutate.survivors_of(report)
    assert mutate.main(["--only", "x*", "--paths", "sim/*"]) == 2


def test_mutants_of_a_source_carry_the_lines_they_change(tmp_path: Path) -> None:
    (tmp_path / "setup.cfg").write_text(mutate.mutmut_config())
    for package in mutate.CODE:
        (tmp_path / package).mkdir()
    got = mutate.mutants_of_source(tmp_path, "models/virtio_net/x.py", "def f(a):\n    return a + 1\n")
    assert got and all(n.startswith("models.virtio_net.x.x_f__mutmut_") for n in got)
    assert ["return a - 1"] in got.values()
    assert all(len(lines) == 1 for lines in got.values())  # one line changed each, the def line not among them
