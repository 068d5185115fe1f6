"""Shared helpers for the report / policy / gate tests (issue 7).

- ``sample_report``: a complete ``Report`` with image/table/values evidence made by ``plots`` (no scan).
- ``HOSTILE``: strings with HTML, Markdown, ANSI and bidi tricks used to check every writer is inert.
- ``make_teacher_file``: a real ``smallcnn`` safetensors checkpoint + card, optionally rigged to
  always predict class 0 (what the test-only probe flags).
- ``CollapseProbe``: a test-only probe (tests the GATE, not a detector): it synthesises a few raw
  samples with the real engine and flags the teacher when >= 90 % of them land in one class.
- ``rules_only``: a rules TOML enabling only the given probes (every other registered probe disabled).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from teacher_audit.probes import PROBES, Probe
from teacher_audit.report.model import (
    ArchitectureInfo, Budget, Evidence, InputInfo, InputSpecInfo, IntakeResult, PickleScan, ProbeResult, Report,
    Timings, Verdict, Versions,
)
from teacher_audit.report.plots import histogram_png, image_grid_png, trigger_png
from teacher_audit.severity import Severity

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>[click](http://evil.example/x) **b** | @admin \x1b[31mRED\x1b[0m \u202eevil $x$"
HOSTILE_MARKERS = ["<script>", "<img src=x", "](http", "\x1b", "\u202e", "| @admin"]

TEST_PROBE = "zz_test_collapse"


def sample_report(hostile: bool = False, verdict: str = "fail") -> Report:
    """A full report as a scan would produce it (fixed numbers; evidence made by the plot helpers)."""
    h = HOSTILE if hostile else ""
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(9, 1, 28, 28, generator=g)
    ev = [
        Evidence(name=f"inverted trigger{h}", kind="image", caption=f"target class 3{h}",
                 png=trigger_png(torch.randn(1, 28, 28, generator=g) * 0.1)),
        Evidence(name="suspect samples", kind="image", caption="grid", png=image_grid_png(imgs, labels=[h or "3"] * 9)),
        Evidence(name="robustness histogram", kind="image", png=histogram_png(torch.rand(300, generator=g), thresholds=[0.5])),
        Evidence(name="per-class", kind="table", table=[{"class": f"c0{h}", "flip": 0.9}, {"class": "c1", "flip": 0.1}]),
        Evidence(name="stats", kind="values", values={"tail_ratio": 4.2, f"k{h}": f"v{h}"}),
        Evidence(name="note", kind="text", text=f"could also be NTL{h}"),
    ]
    flagged = verdict == "fail"
    probes = [
        ProbeResult(probe="backdoor_fused", threat="backdoor", score=3.1 if flagged else 0.2, threshold=1.0,
                    flagged=flagged, severity=Severity.HIGH if flagged else Severity.INFO,
                    summary=f"suspected backdoor toward class 3{h}", target_class=3 if flagged else None,
                    evidence=ev, budget=Budget(teacher_passes=1000, seconds=2.5), seed=0),
        ProbeResult(probe="ntl_robustness", threat="ntl", score=0.1, threshold=0.5, flagged=False,
                    summary="no second robust mode", budget=Budget(teacher_passes=500, seconds=1.5), seed=0),
        ProbeResult(probe="backdoor_margin", threat="backdoor", status="skipped", summary=f"disabled{h}"),
    ]
    path = f"models/teacher{h}.pt"
    sha = "ab" * 32
    intake = IntakeResult(path=path, size=12345, sha256=sha, format="torch-zip",
                          pickle=PickleScan(scanned=True, members=["archive/data.pkl"],
                                            globals_found=["collections.OrderedDict", f"torch._utils._rebuild_tensor_v2{h}"],
                                            allowed=["collections.OrderedDict"]),
                          architecture="smallcnn", architecture_source="card", notes=[f"card read{h}"])
    code = {"pass": 0, "fail": 1, "error": 2, "not_auditable": 3}[verdict]
    from teacher_audit.policy import load_policy

    return Report(
        input=InputInfo(path=path, size=12345, sha256=sha, format="torch-zip"), intake=intake,
        architecture=ArchitectureInfo(name="smallcnn", source="card", candidates=[{"name": "smallcnn", "score": 1.0}]),
        input_spec=InputSpecInfo(channels=1, height=28, width=28, value_range=[0, 1], mean=[0.286], std=[0.353],
                                 num_classes=10, class_names=[f"cls{i}{h}" for i in range(10)],
                                 sources={"channels": "card"}),
        probes=probes, policy=load_policy().applied(sha),
        verdict=Verdict(status=verdict, exit_code=code, reasons=[f"backdoor_fused: high backdoor finding{h}"]),
        timings=Timings(started_at="2026-01-01T00:00:00+00:00", finished_at="2026-01-01T00:00:05+00:00",
                        total_seconds=5.0),
        budget=Budget(teacher_passes=1500, seconds=4.0), seeds={"scan": 0},
        versions=Versions(tool="0.1.0", python="3.11", torch=torch.__version__),
    )


def make_teacher_file(folder: Path, name: str = "teacher.safetensors", rigged: bool = False,
                      class_names: list[str] | None = None) -> Path:
    """A real smallcnn safetensors checkpoint + card; ``rigged`` = always predicts class 0."""
    from safetensors.torch import save_file

    from teacher_audit.intake.archs import build_arch

    torch.manual_seed(0)
    net = build_arch("smallcnn", num_classes=10, in_channels=1)
    sd = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    if rigged:
        last_bias = [k for k, v in sd.items() if k.endswith("bias") and v.shape == (10,)][-1]
        sd[last_bias][0] = 1000.0
    path = folder / name
    save_file(sd, str(path))
    card = {"arch": "smallcnn", "input": {"channels": 1, "height": 28, "width": 28, "value_range": [0, 1],
                                          "mean": [0.286], "std": [0.353]}, "num_classes": 10}
    if class_names is not None:
        card["class_names"] = class_names
    Path(str(path) + ".card.json").write_text(json.dumps(card))
    return path


class CollapseProbe(Probe):
    """TEST-ONLY probe: flags a teacher whose top-1 logit towers over the rest on engine samples.

    score = mean over synthetic samples of (top-1 logit - top-2 logit); the rigged teacher (class-0
    bias +1000) scores ~1000, an untrained smallcnn a few units.
    """

    name = TEST_PROBE
    threat = "backdoor"

    @dataclass
    class Config:
        threshold: float = 50.0
        n: int = 16
        seed: int = 0

    def run(self, teacher, engine) -> ProbeResult:  # noqa: ANN001
        x = engine.synthesize(self.config.n, steps=0)
        logits = teacher.model(x)
        top2 = logits.topk(2, dim=1).values
        score = float((top2[:, 0] - top2[:, 1]).mean())
        flagged = score > self.config.threshold
        target = int(torch.bincount(logits.argmax(1)).argmax())
        return ProbeResult(probe=self.name, threat="backdoor", score=score, threshold=self.config.threshold,
                           flagged=flagged, severity=Severity.HIGH if flagged else Severity.INFO,
                           target_class=target if flagged else None,
                           summary=f"mean top-1/top-2 logit gap {score:.3g}",
                           evidence=[Evidence(name="samples", kind="image", png=image_grid_png(x[:9])),
                                     Evidence(name="gap histogram", kind="image",
                                              png=histogram_png(top2[:, 0] - top2[:, 1]))],
                           budget=Budget(teacher_passes=len(x)), seed=self.config.seed)


def register_test_probe() -> None:
    """Register ``CollapseProbe`` (default off: only rules that enable it run it)."""
    if TEST_PROBE not in PROBES:
        PROBES.register(TEST_PROBE, threat="backdoor", default=False)(CollapseProbe)


def unregister_test_probe() -> None:
    PROBES._items.pop(TEST_PROBE, None)  # noqa: SLF001 - test-only cleanup so other tests never see it
    PROBES._meta.pop(TEST_PROBE, None)  # noqa: SLF001


def rules_only(folder: Path, enabled: list[str], *, fail_level: str = "high", threats: list[str] | None = None,
               allow: list[tuple[str, str, dt.date]] = (), name: str = "test") -> Path:
    """Write a rules file enabling only ``enabled`` (all other registered probes disabled)."""
    lines = ["[policy]", f'name = "{name}"', f'fail_level = "{fail_level}"',
             f"required_threats = {json.dumps(threats or [])}", ""]
    for p in PROBES.names():
        lines += [f"[probes.{p}]", f"enabled = {'true' if p in enabled else 'false'}", ""]
    for sha, reason, exp in allow:
        lines += ["[[allowlist]]", f'sha256 = "{sha}"', f"reason = {json.dumps(reason)}", f"expires = {exp.isoformat()}", ""]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines))
    return path
