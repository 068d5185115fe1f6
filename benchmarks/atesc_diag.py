"""ATEsc diagnostics on an NTL zoo teacher: what the split catches, and an oracle upper bound.

Every synthetic student batch is also labelled by the NTL teacher's *clean twin* (the clean zoo teacher
it was fine-tuned from, ``ground_truth.recipe.warm_start``; analysis only, the defense never sees it).
Modes: ``none`` (plain DFKD), ``atesc`` (ATEsc with ``k=v,...`` options; reports the split's share,
precision and recall against "the twin disagrees"; e.g. ``escape=none`` or ``escape_weight=1`` for the
generator-side escape variants), ``oracle_drop`` (KD only where the twin agrees),
``oracle_forget`` (plus uniform forgetting where it disagrees). Prints and appends one JSON line.

Usage: ``python benchmarks/atesc_diag.py TEACHER MODE BUDGET [k=v,...] [--zoo DIR] [--out FILE]``
(docs/ntl.md "What was tried for ATEsc").
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
import torch
torch.set_num_threads(1)
import suite_ntl as S
from teacher_audit.data import load_dataset
from teacher_audit.defenses import DEFENSES
from teacher_audit.defenses.atesc import FORGET
from teacher_audit.attacks.split import robust_split
from teacher_audit.synth import PRESETS, Engine
from teacher_audit.synth.hooks import Hook

argv = list(sys.argv[1:])
OUT = "atesc_diag.jsonl"
for flag in ("--zoo", "--out"):
    if flag in argv:
        i = argv.index(flag)
        val = argv[i + 1]
        del argv[i:i + 2]
        if flag == "--zoo":
            S.ZOOS[:] = [Path(val)]
        else:
            OUT = val
name, mode, budget = argv[0], argv[1], int(argv[2])
opts = S.parse_options(argv[3]) if len(argv) > 3 else {}
teacher, card = S.load(name)
gt = card["ground_truth"]
twin, _ = S.load(gt["recipe"]["warm_start"])
desc = gt.get("ood")
K = int(teacher.spec.num_classes)
data = load_dataset("fashion-mnist", "test", spec=teacher.spec, limit=1000)
xo = S.ood_transform(desc)(data.x) if desc else None

class Diag(Hook):
    """oracle_* modes replace the student loss using the clean twin; atesc mode only observes."""
    def __init__(self, mode, inner=None):
        self.mode, self.inner, self.log = mode, inner, []
    def student_loss(self, ctx):
        if ctx.phase != "student":
            return None
        with torch.no_grad():
            agree = twin.model(ctx.x).argmax(1) == ctx.t_logits.argmax(1)
        self._agree = agree
        if not self.mode.startswith("oracle"):
            return None
        s, t = ctx.s_logits, ctx.t_logits
        loss = ctx.engine.kd_loss(t[agree], s[agree]) * agree.float().mean() if agree.any() else s.sum() * 0
        if self.mode == "oracle_forget" and (~agree).any():
            loss = loss + FORGET.get("uniform")(s[~agree], t[~agree], None) * (~agree).float().mean()
        return loss
    def on_batch(self, ctx):
        if ctx.phase != "student":
            return
        rec = {"agree": float(self._agree.float().mean()),
               "tcls": torch.bincount(ctx.t_logits.argmax(1), minlength=K).tolist()}
        if self.inner is not None and self.inner.stats:
            sc = self.inner.scores(ctx.engine, ctx.x)
            rob = robust_split(sc, method=self.inner.cfg.split, min_separation=self.inner.cfg.min_separation,
                               min_gap=self.inner.cfg.min_gap).robust
            dis = ~self._agree.cpu()
            rec.update(robust=float(rob.float().mean()),
                       prec=float((rob & dis).sum() / max(1, rob.sum())),
                       rec=float((rob & dis).sum() / max(1, dis.sum())),
                       rob_cls=torch.bincount(ctx.t_logits.argmax(1).cpu()[rob], minlength=K).tolist())
        self.log.append(rec)

torch.manual_seed(0)
engine = Engine(teacher, PRESETS.get("fast")(), device="cpu", seed=0)
hooks = []
inner = None
if mode.startswith("atesc"):
    opts.setdefault("charge_passes", False)
    hooks = DEFENSES.get("atesc")(teacher, engine, **opts)
    inner = hooks[0]
diag = Diag(mode, inner)
hooks = hooks + [diag]
t0 = time.perf_counter()
res = engine.run(budget_passes=budget, hooks=hooks, progress=False)
s = res.student
with torch.no_grad():
    sid = float((s(data.x).argmax(1) == data.y).float().mean())
    out = {"teacher": name, "mode": mode, "opts": opts, "budget": budget, "id": sid,
           "seconds": time.perf_counter() - t0}
    if xo is not None:
        t = teacher.model(xo).argmax(1); wrong = t != data.y
        so = s(xo).argmax(1)
        out["ood"] = float((so == data.y).float().mean())
        out["agree_ood"] = float((so[wrong] == t[wrong]).float().mean())
L = diag.log
out["twin_agree_mean"] = float(np.mean([r["agree"] for r in L]))
for k in ("robust", "prec", "rec"):
    v = [r[k] for r in L if k in r]
    if v: out[k] = float(np.mean(v))
if L and "rob_cls" in L[-1]:
    out["rob_cls_total"] = np.sum([r["rob_cls"] for r in L if "rob_cls" in r], 0).tolist()
out["tcls_total"] = np.sum([r["tcls"] for r in L], 0).tolist()
print(json.dumps(out), flush=True)
with open(OUT, "a") as f:
    f.write(json.dumps(out) + "\n")
