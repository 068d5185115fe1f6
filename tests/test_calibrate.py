"""User calibration: the fitting rule, the leave-one-out check, the file, its scope, and scan applying it."""

from __future__ import annotations

import html
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from teacher_audit.calibrate import (
    fit,
    leave_one_out,
    load_calibration,
    parse_calibration,
    score_run,
)
from teacher_audit.errors import UsageError
from teacher_audit.probes.calibration import fingerprint, scope, scope_note
from teacher_audit.probes.calibration_fit import fit_backdoor, fit_ntl, ntl_rescore


def _per_class(seed: int, odd: int | None = None, natural: int = 8) -> dict[str, list[float]]:
    """Per-class component details: class ``natural`` is easy in every teacher (large margin, small masks,
    as class 8 is for the unseen-architecture teachers); ``odd`` is a backdoor-like outlier of this teacher."""
    g = np.random.default_rng(seed)
    margins = 10 ** (0.0 + 0.05 * g.standard_normal(10))
    norms = 10 ** (-1.0 + 0.05 * g.standard_normal(10))
    robust = 10 ** (-0.5 + 0.05 * g.standard_normal(10))
    margins[natural] *= 3
    norms[natural] /= 10
    robust[natural] /= 10
    if odd is not None:
        margins[odd] *= 3
        norms[odd] /= 10
        robust[odd] /= 10
    return {"margins": margins.tolist(), "mask_norms": norms.tolist(), "robust": robust.tolist()}


def _run(teacher: str, seed: int, margin: float, inversion: float, robust: float, ntl_tail: float,
         gap: float | None = None, fp: str = "f" * 16, odd: int | None = None) -> dict:
    """A run record as :func:`teacher_audit.calibrate.collect_runs` writes it, with the given raw scores."""
    pc = _per_class(zlib.crc32(f"{teacher}-{seed}".encode()), odd)
    comps = {"backdoor_margin": {"status": "ok", "score": margin, "target_class": 8,
                                 "details": {"margins": pc["margins"]}},
             "backdoor_inversion": {"status": "ok", "score": inversion, "target_class": 8,
                                    "details": {"mask_norms": pc["mask_norms"]}},
             "backdoor_robust_inversion": {"status": "ok", "score": robust, "target_class": 8,
                                           "details": {"mask_norms": pc["robust"]}}}
    ntl = {"collapsed_tail_share": ntl_tail, "pull_excess": 0.0, "synthesis_bn_prior": gap is None}
    if gap is not None:
        ntl["trap_inversion_gap"] = gap
    return {"file": f"{teacher}.onnx", "path": f"/x/{teacher}.onnx", "sha256": teacher * 8, "seed": seed,
            "arch": "onnx", "fingerprint": fp,
            "backdoor": {"details": {"components": comps, "synthesis_bn_prior": gap is None}},
            "ntl": {"details": ntl}}


CLEAN = [_run(t, s, 1.5 + 0.1 * i + 0.05 * s, 1.6 - 0.1 * i, 0.2 + 0.02 * i, 0.05 + 0.02 * i + 0.01 * s)
         for i, t in enumerate(("aaaa", "bbbb", "cccc", "dddd")) for s in (0, 1)]


def test_ntl_rule_is_max_clean_times_headroom():
    runs = [{"collapsed_tail_share": 0.1, "synthesis_bn_prior": True},
            {"collapsed_tail_share": 0.3, "pull_excess": 0.0, "synthesis_bn_prior": True}]
    got = fit_ntl(runs, default_inversion_threshold=0.45)
    assert got["threshold"] == pytest.approx(0.38)           # 0.3 x 1.25 = 0.375, rounded up to 0.01
    assert got["inversion_threshold"] == 0.45 and not got["inversion_fitted"]
    with_gap = fit_ntl([dict(r, trap_inversion_gap=g, synthesis_bn_prior=False) for r, g in zip(runs, (0.2, 0.5))], 0.45)
    assert with_gap["inversion_threshold"] == pytest.approx(0.65) and with_gap["inversion_fitted"]
    quiet = fit_ntl([{"collapsed_tail_share": 0.0, "synthesis_bn_prior": True}], 0.45)
    assert quiet["threshold"] == 0.05                        # floor: a zero threshold would flag everything
    # the gap is put on the score's scale: at the inversion threshold it lands on the threshold
    assert ntl_rescore({"collapsed_tail_share": 0.0, "trap_inversion_gap": 0.65, "synthesis_bn_prior": False},
                       0.3, 0.65) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        fit_ntl([], 0.45)


def test_backdoor_threshold_sits_margin_above_every_clean_run():
    from teacher_audit.calibrate import _backdoor_run

    ntl = fit_ntl([r["ntl"]["details"] for r in CLEAN], 0.45)
    runs = [_backdoor_run(r, ntl) for r in CLEAN]
    cal = fit_backdoor(runs, margin=0.5)
    assert set(cal["components"]) == {"backdoor_margin", "backdoor_inversion", "backdoor_robust_inversion", "consensus"}
    assert all(c["sd"] >= 0.1 for c in cal["components"].values())
    from teacher_audit.probes.backdoor_fused import fuse

    fused = [fuse(res, cal, nd)[0] for res, nd in runs]
    assert max(fused) + 0.5 == pytest.approx(cal["threshold"], abs=1e-3)
    with pytest.raises(ValueError):
        fit_backdoor([({}, None)])


def test_leave_one_out_flags_the_teacher_unlike_the_others():
    odd = [_run("eeee", s, 1.6, 1.6, 0.2, 0.06, odd=3) for s in (0, 1)]   # class 3 outlier, unlike the others
    loo = leave_one_out(CLEAN + odd, margin=0.5)
    assert len(loo) == 10
    flagged = {r["file"] for r in loo if r["backdoor_flagged"]}
    assert flagged == {"eeee.onnx"}
    assert {r["backdoor_target"] for r in loo if r["file"] == "eeee.onnx"} == {3}
    assert leave_one_out(CLEAN[:2], 0.5) == []                  # one teacher: nothing to leave out


def test_class_reference_compares_each_class_with_itself():
    """Clean teachers' naturally easy class 8 is not a finding; the same magnitude on class 3 is. The threshold
    comes from held-out teachers, so it sits above the in-sample scores."""
    from teacher_audit.calibrate import _backdoor_run
    from teacher_audit.probes import backdoor_reference as cr

    ntl = fit_ntl([r["ntl"]["details"] for r in CLEAN], 0.45)
    teachers = [[_backdoor_run(r, ntl)[0] for r in CLEAN if r["sha256"] == t * 8] for t in ("aaaa", "bbbb", "cccc", "dddd")]
    got = cr.fit(teachers, margin=0.5)
    assert got["threshold_basis"] == "leave-one-teacher-out"
    ref = got["reference"]
    assert set(ref) == {"margin", "inversion", "robust_inversion"} and all(f["sd"] >= cr.SD_FLOOR for f in ref.values())
    in_sample = max(cr.result(r, ref).score for t in teachers for r in t)
    assert got["threshold"] >= in_sample + 0.5
    clean_new = _backdoor_run(_run("ffff", 0, 1.5, 1.5, 0.2, 0.05), ntl)[0]
    bd_new = _backdoor_run(_run("gggg", 0, 1.5, 1.5, 0.2, 0.05, odd=3), ntl)[0]
    rc, rb = cr.result(clean_new, ref), cr.result(bd_new, ref)
    assert rc.score < got["threshold"] < rb.score and rb.target_class == 3
    assert cr.result(bd_new, ref, traps={3}).target_class != 3      # an NTL trap class is left to the NTL probe
    one = cr.fit(teachers[:1], margin=0.5)
    assert one["threshold_basis"].startswith("in-sample")
    with pytest.raises(ValueError):
        cr.fit_reference([{}])


def test_fit_writes_a_valid_file_that_reads_back(tmp_path):
    cal = fit(CLEAN, margin=0.5, options={"seeds": [0, 1]})
    assert cal.scope.n_clean == 4 and cal.scope.fingerprints == ["f" * 16] and len(cal.runs) == 8
    assert all(not r["backdoor_flagged"] and not r["ntl_flagged"] for r in cal.runs)
    assert all(not r["ntl_flagged"] for r in cal.leave_one_out)
    path = tmp_path / "cal.json"
    path.write_text(cal.to_json())
    back = load_calibration(path)
    assert back.backdoor == cal.backdoor and back.ntl == cal.ntl and back.sha256 and back.source == str(path)
    over = back.overrides("backdoor")["calibration"]
    assert over["threshold"] == cal.backdoor.threshold and over["scope"]["fingerprints"] == ["f" * 16]
    assert back.overrides("ntl_robustness")["threshold"] == cal.ntl.threshold
    assert back.overrides("no_such_probe") == {}
    # a run scored under the file's calibration matches the record
    again = score_run(CLEAN[0], back.backdoor.model_dump(), back.ntl.model_dump())
    assert again["backdoor_fused"] == pytest.approx(cal.runs[0]["backdoor_fused"], abs=1e-3)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: "not json", "not valid JSON"),
    (lambda d: [1, 2], "not a calibration file"),
    (lambda d: {**d, "kind": "something else"}, "not a calibration file"),
    (lambda d: {**d, "schema": 2}, "schema 2 is not supported"),
    (lambda d: {**d, "extra": 1}, "unknown key 'extra'"),
    (lambda d: {k: v for k, v in d.items() if k != "ntl"}, "missing key 'ntl'"),
    (lambda d: {**d, "ntl": {**d["ntl"], "threshold": -1}}, "ntl.threshold"),
    (lambda d: {**d, "backdoor": {**d["backdoor"], "components": {"pull": {"mean": 0.1, "sd": 0}}}}, "sd"),
    (lambda d: {**d, "backdoor": {**d["backdoor"], "components": {}}}, "components"),
])
def test_bad_calibration_files_are_one_line_usage_errors(tmp_path, mutate, message):
    good = json.loads(fit(CLEAN).to_json())
    bad = mutate(good)
    text = bad if isinstance(bad, str) else json.dumps(bad)
    with pytest.raises(UsageError) as e:
        parse_calibration(text, "cal.json")
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UsageError, match="cannot read calibration file"):
        load_calibration(tmp_path / "missing.json")


def test_fingerprint_is_the_structure_not_the_weights():
    from teacher_audit.intake.archs import build_arch

    torch.manual_seed(0)
    a = build_arch("smallcnn", num_classes=10, in_channels=1)
    torch.manual_seed(1)
    b = build_arch("smallcnn", num_classes=10, in_channels=1)
    assert not torch.equal(next(a.parameters()), next(b.parameters()))
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(build_arch("lenet5", num_classes=10, in_channels=1)) != fingerprint(a)
    assert fingerprint(build_arch("smallcnn", num_classes=5, in_channels=1)) != fingerprint(a)
    user = {"source": "calibration x.json", "archs": ["smallcnn"], "fingerprints": [fingerprint(a)], "n_clean": 3}
    assert scope("smallcnn", fingerprint(b), user)["in_scope"] and scope_note(scope("smallcnn", fingerprint(b), user)) is None
    other = scope("lenet5", fingerprint(build_arch("lenet5", num_classes=10, in_channels=1)), user)
    assert not other["in_scope"] and "calibration x.json" in scope_note(other)
    assert "teacher-audit calibrate" in scope_note(scope("onnx"))
    # intake reports the same key (inspect and the report's intake block)
    from teacher_audit.intake.inspect import inspect_path
    from teacher_audit.intake.load import LoadOptions

    example = Path(__file__).resolve().parents[1] / "examples/teachers/clean_smallcnn.safetensors"
    assert inspect_path(example, LoadOptions(device="cpu")).structure_fingerprint == fingerprint(a)


def test_scan_applies_the_calibration_and_rules_still_win(tmp_path):
    from teacher_audit.policy import parse_policy
    from teacher_audit.probes import PROBES
    from teacher_audit.scan import ScanOptions, _configure

    path = tmp_path / "cal" / "c.json"
    path.parent.mkdir()
    cal = fit(CLEAN)
    path.write_text(cal.to_json())
    loaded = load_calibration(path)
    opts = ScanOptions(calibration=loaded)
    pol = parse_policy('[policy]\nname = "t"\n')
    bd = _configure(PROBES.get("backdoor"), "backdoor", pol, opts, None)
    assert bd.calibration["threshold"] == cal.backdoor.threshold and bd.threshold is None
    ntl = _configure(PROBES.get("ntl_robustness"), "ntl_robustness", pol, opts, None)
    assert ntl.threshold == cal.ntl.threshold and ntl.calibration_scope["n_clean"] == 4
    ruled = parse_policy('[policy]\nname = "t"\n[probes.ntl_robustness]\nthreshold = 0.9\n')
    assert _configure(PROBES.get("ntl_robustness"), "ntl_robustness", ruled, opts, None).threshold == 0.9
    # [calibration] file in the rules resolves against the rules file's folder; --calibration wins
    rules = tmp_path / "rules.toml"
    rules.write_text('[policy]\nname = "r"\n[calibration]\nfile = "cal/c.json"\n')
    from teacher_audit.policy import load_policy

    pol2 = load_policy(rules)
    assert pol2.calibration_path() == tmp_path / "cal" / "c.json"
    assert ScanOptions(rules=rules).resolved_calibration().sha256 == loaded.sha256
    assert ScanOptions(rules=rules, policy_calibration=False).resolved_calibration() is None
    assert ScanOptions().resolved_calibration() is None
    rules.write_text('[policy]\nname = "r"\n[calibration]\nfile = "nowhere.json"\n')
    with pytest.raises(UsageError, match="cannot read calibration file"):
        ScanOptions(rules=rules).resolved_calibration()


def test_scan_cli_refuses_a_bad_calibration_file(tmp_path, capsys):
    from teacher_audit.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "teacher-audit calibration", "schema": 1}')
    model = Path(__file__).resolve().parents[1] / "examples/teachers/clean_smallcnn.safetensors"
    with pytest.raises(SystemExit) as e:
        main(["scan", str(model), "--calibration", str(bad), "-q"])
    assert e.value.code == 4
    err = capsys.readouterr().err
    assert "bad.json: missing key" in err


def _export(teacher, path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(teacher.model.cpu().eval(), (torch.rand(1, *teacher.spec.shape),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    return path


@pytest.mark.usefixtures("one_thread")
def test_calibrate_then_scan_end_to_end(tmp_path, capsys):
    """The user's workflow on ONNX teachers (LeNet-5 trained here, no card: outside the built-in scope):
    calibrate on three clean ones, then scan a held-out clean one and a backdoored one with the file.
    Measured (one thread, offline from the same runs): class-reference threshold 4.36 (leave-one-teacher-out);
    held-out clean 1.33, BadNets 11.46 with target 3; NTL clean 0.039 < 0.05."""
    from teacher_audit.cli import main
    from teacher_audit.zoo.tiny import train_tiny

    clean = [_export(train_tiny("clean", seed=s, arch="lenet5"), tmp_path / f"clean_s{s}.onnx") for s in range(4)]
    bd = _export(train_tiny("backdoor", trigger={"name": "badnets_square", "size": 6}, target=3, steps=200,
                            poison_ratio=0.3, arch="lenet5"), tmp_path / "badnets.onnx")
    cal = tmp_path / "cal.json"
    with pytest.raises(SystemExit) as e:
        main(["calibrate", *map(str, clean[1:]), "--out", str(cal), "--seeds", "0", "--jobs", "2", "-q"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "calibration written" in text and "leave-one-teacher-out: " in text
    doc = load_calibration(cal)
    assert doc.scope.n_clean == 3 and len(doc.runs) == 3 and len(doc.leave_one_out) == 3
    assert doc.scope.archs == ["onnx"] and len(doc.scope.fingerprints) == 1   # one structure, three trainings
    assert len(list((tmp_path / "cal.json.runs").iterdir())) == 3   # one cached run per teacher and seed
    reports = {}
    for f in (clean[0], bd):
        out = tmp_path / f"{f.stem}.json"
        with pytest.raises(SystemExit) as e:
            main(["scan", str(f), "--calibration", str(cal), "--json", str(out), "--md", str(out.with_suffix(".md")),
                  "-q"])
        reports[f.stem] = (e.value.code, json.loads(out.read_text()))
    code, rep = reports["clean_s0"]
    probes = {p["probe"]: p for p in rep["probes"]}
    assert code == 0 and not probes["backdoor"]["flagged"] and not probes["ntl_robustness"]["flagged"]
    assert probes["backdoor"]["threshold"] == doc.backdoor.threshold
    assert probes["ntl_robustness"]["threshold"] == doc.ntl.threshold
    assert rep["options"]["calibration"]["sha256"] == doc.sha256
    md_text = html.unescape((tmp_path / "clean_s0.md").read_text())  # the writer escapes punctuation
    assert "Thresholds: calibration file" in md_text and f"sha256 {doc.sha256[:12]}), 3 clean teacher(s)" in md_text
    assert probes["backdoor"]["details"]["calibration_scope"]["in_scope"]
    assert rep["intake"]["structure_fingerprint"] == doc.scope.fingerprints[0]
    assert "outside" not in probes["backdoor"]["summary"] and "another structure" not in probes["backdoor"]["summary"]
    code, rep = reports["badnets"]
    probes = {p["probe"]: p for p in rep["probes"]}
    assert code == 1 and probes["backdoor"]["flagged"] and probes["backdoor"]["target_class"] == 3
    # a rerun reuses every cached run (no scan): same thresholds
    with pytest.raises(SystemExit):
        main(["calibrate", *map(str, clean[1:]), "--out", str(tmp_path / "again.json"), "--seeds", "0",
              "--cache-dir", str(tmp_path / "cal.json.runs")])
    assert "seed 0: cached" in capsys.readouterr().err
    assert load_calibration(tmp_path / "again.json").backdoor == doc.backdoor


def test_a_reference_for_another_class_count_is_an_error_that_says_so():
    """A calibration of 10-class teachers applied to a teacher whose components report 5 classes: no silent pass."""
    from teacher_audit.calibrate import _backdoor_run
    from teacher_audit.probes.backdoor_fused import FusedBackdoorProbe, FusedConfig
    from teacher_audit.report.model import Budget

    cal = fit(CLEAN).overrides("backdoor")["calibration"]
    five = _backdoor_run(_run("hhhh", 0, 1.5, 1.5, 0.2, 0.05), fit(CLEAN).ntl.model_dump())[0]
    for r in five.values():
        r.details = {k: v[:5] for k, v in r.details.items()}
    out = FusedBackdoorProbe(FusedConfig(calibration=cal)).conclude(five, Budget(), [])
    assert out.status == "error" and "class reference" in out.summary and "10 classes" in out.summary


def test_ci_workflow_takes_the_calibration_from_the_base_commit(tmp_path):
    """The example workflow's policy step, run on a repository whose change under review edits the calibration:
    the copied rules read the BASE commit's calibration file."""
    import os
    import subprocess

    import yaml

    root = Path(__file__).resolve().parents[1]
    wf = yaml.safe_load((root / "examples/ci/teacher-audit.yml").read_text())
    step = next(s["run"] for s in wf["jobs"]["audit"]["steps"] if "rules/teacher-audit.toml" in s.get("run", ""))
    lines = step.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith('mkdir -p "$RUNNER_TEMP/teacher-audit"'))
    policy_script = "\n".join(lines[start:])
    repo = tmp_path / "repo"
    (repo / "rules/calibration").mkdir(parents=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "RUNNER_TEMP": str(tmp_path / "runner")}

    def sh(cmd: str) -> str:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=repo, env=env, capture_output=True,
                              text=True, check=True, timeout=120).stdout

    good = fit(CLEAN)
    (repo / "rules/teacher-audit.toml").write_text('[policy]\nname = "org"\n[calibration]\nfile = "calibration/net.json"\n')
    (repo / "rules/calibration/net.json").write_text(good.to_json())
    sh("git init -q && git add -A && git commit -qm base")
    base = sh("git rev-parse HEAD").strip()
    weak = json.loads(good.to_json())
    weak["backdoor"]["threshold"] = 1e9                      # the change under review tries to switch the gate off
    (repo / "rules/calibration/net.json").write_text(json.dumps(weak))
    sh("git commit -qam 'raise the threshold'")
    sh(f"base={base}\n{policy_script}")
    from teacher_audit.scan import ScanOptions

    used = ScanOptions(rules=tmp_path / "runner/teacher-audit/policy.toml").resolved_calibration()
    assert used.backdoor.threshold == good.backdoor.threshold
