"""The synthesis engine: one data-free KD loop shared by every probe, both defenses and ``distill``.

Method (ALGORITHMS.md §1): a generator G maps noise to raw images; the frozen teacher T labels
them; generator and student S alternate. The generator loss is a weighted sum of registered terms
(``losses.LOSS_TERMS``) plus whatever the hooks add; the student loss is KD unless a hook replaces
it. Presets (``config.PRESETS``) are weight/schedule tables over this one loop.

Threat assumption: the teacher is untrusted but only ever *evaluated*; nothing from the checkpoint
is executed beyond the already-loaded network's forward.

Budget: counted in teacher image passes (every image forwarded through the teacher, with or
without gradient) and/or wall-clock seconds. Runs are repeatable on CPU for a given seed; with a
checkpoint directory they checkpoint every ``checkpoint_every`` iterations and on Ctrl-C (at the
next iteration boundary), and ``resume=True`` continues to the same end state as an uninterrupted
run with the same budget in passes.
"""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from teacher_audit.device import autocast, pick_device
from teacher_audit.errors import UsageError
from teacher_audit.modes import EvalMode
from teacher_audit.synth.checkpoint import load_checkpoint, save_checkpoint
from teacher_audit.synth.config import PRESETS, EngineConfig
from teacher_audit.synth.generator import Generator
from teacher_audit.synth.hooks import BatchContext, Hook
from teacher_audit.synth.losses import LOSS_TERMS, FeatureBank, TeacherTaps, TermState, kd_loss
from teacher_audit.synth.pool import SamplePool
from teacher_audit.synth.students import build_student, default_student_arch
from teacher_audit.teacher import Teacher, TeacherModel


@dataclass
class RunResult:
    """Outcome of :meth:`Engine.run`.

    Attributes:
        student: the student wrapper (raw images in, logits out; ``.net`` is the bare network).
        passes: teacher image passes spent by the engine in total.
        seconds: wall-clock seconds of ``run`` (summed over resumed segments).
        history: records ``{"kind": "train"|"eval", "iteration", "passes", "seconds", ...}``.
        stopped: ``budget_passes`` or ``budget_seconds``.
        notes: what was switched off and why (e.g. no BN layers -> no BN prior).
        terms: generator-loss terms that were active.
    """

    student: nn.Module
    passes: int
    seconds: float
    history: list[dict[str, Any]]
    stopped: str = ""
    notes: list[str] = field(default_factory=list)
    terms: dict[str, float] = field(default_factory=dict)


class _Interrupt:
    """SIGINT -> flag, so an interrupted run stops at an iteration boundary with a clean checkpoint."""

    def __init__(self) -> None:
        self.hit = False
        self._old: Any = None

    def __enter__(self) -> "_Interrupt":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.hit:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class Engine:
    """Budgeted data-free KD on one teacher.

    Args:
        teacher: the loaded, frozen teacher (``teacher.model`` takes raw images).
        config: an :class:`EngineConfig` (default: the ``dfq`` preset).
        student: optional student network. A ``TeacherModel`` wrapper is used as is; any other module
            is taken to expect NORMALISED input (like ``build_arch`` nets) and is wrapped with the
            teacher's normalisation. ``None``: built lazily from ``config.student_arch``.
        device: ``auto``, ``cpu``, ``cuda[:N]`` or a ``torch.device``.
        seed: seeds the generator/student init and every random draw of the engine.
    """

    def __init__(self, teacher: Teacher, config: EngineConfig | None = None, student: nn.Module | None = None,
                 device: str | torch.device = "auto", seed: int = 0):
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.teacher = teacher.to(self.device)
        self.spec = teacher.spec
        self.config = config if config is not None else PRESETS.get("dfq")()
        for name in self.config.active_terms():
            LOSS_TERMS.get(name)  # unknown term names fail here, as a usage error
        self.seed = seed
        cfg = self.config
        self.notes: list[str] = []
        w = cfg.active_terms()
        self.taps = TeacherTaps(teacher.model, want_features="act" in w, want_instance="cr" in w)
        if not self.taps.has_bn:
            off = [t for t in ("bn", "cr") if t in w]
            if off:
                self.notes.append(f"teacher has no BatchNorm running statistics: {'/'.join(off)} term(s) off")
        if "act" in w and not self.taps.has_linear:
            self.notes.append("teacher has no Linear classifier layer: act term off")
        self.rng = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.generator = Generator(self.spec, nz=cfg.nz, ngf=cfg.ngf).to(self.device)
            self._student: TeacherModel | None = self._wrap(student) if student is not None else None
        self._work = copy.deepcopy(self.generator) if cfg.meta else None
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_g, betas=(0.5, 0.999))
        self._opt_s: torch.optim.Optimizer | None = None
        amp = cfg.amp and self.device.type == "cuda"
        self._scaler_g = torch.amp.GradScaler("cuda", enabled=amp)
        self._scaler_s = torch.amp.GradScaler("cuda", enabled=amp)
        per_image = 4 * (self.spec.channels * self.spec.height * self.spec.width + self.spec.num_classes)
        self.pool = SamplePool(min(cfg.pool_size, cfg.pool_max_bytes // per_image))
        self.bank = FeatureBank(cfg.bank_size) if "cr" in w else None
        self.passes = 0
        self.budget_share: float | None = None  # share of the running budget spent (set by run)
        self.seconds = 0.0
        self.iteration = 0
        self.gen_step = 0
        self.student_step = 0
        self.history: list[dict[str, Any]] = []
        self._run_start: tuple[int, float] = (0, 0.0)

    # ------------------------------------------------------------------ models
    def _wrap(self, net: nn.Module) -> TeacherModel:
        model = net if isinstance(net, TeacherModel) else TeacherModel(net, self.spec)
        return model.to(self.device)

    @property
    def student(self) -> TeacherModel:
        """The student wrapper (built from ``config.student_arch`` on first use)."""
        if self._student is None:
            arch = self.config.student_arch or default_student_arch(self.teacher.arch)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + 1)
                self._student = self._wrap(build_student(arch, self.spec))
            self.student_arch = arch
        return self._student

    @property
    def opt_s(self) -> torch.optim.Optimizer:
        if self._opt_s is None:
            cfg, params = self.config, self.student.parameters()
            if cfg.student_optimizer == "adam":
                self._opt_s = torch.optim.Adam(params, lr=cfg.lr_s, weight_decay=cfg.weight_decay)
            else:
                self._opt_s = torch.optim.SGD(params, lr=cfg.lr_s, momentum=0.9, nesterov=True,
                                              weight_decay=cfg.weight_decay)
        return self._opt_s

    @property
    def bn_prior_available(self) -> bool:
        return self.taps.has_bn

    # ------------------------------------------------------------------ teacher access
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits on raw images ``x`` without gradient; counted in :attr:`passes`."""
        self.passes += int(x.shape[0])
        with torch.no_grad(), autocast(self.device, self.config.amp):
            return self.teacher.model(x.to(self.device)).float()

    def kd_loss(self, t_logits: torch.Tensor, s_logits: torch.Tensor) -> torch.Tensor:
        """The default student loss at the configured temperature."""
        return kd_loss(t_logits, s_logits, self.config.temperature)

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.config.nz, generator=self.rng).to(self.device)

    # ------------------------------------------------------------------ generator phase
    def _gen_step(self, gen: Generator, opt: torch.optim.Optimizer, z: torch.Tensor, hooks: Sequence[Hook],
                  with_student: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        cfg = self.config
        gen.train()
        student = self.student if with_student else None
        need_s = student is not None and (any(k in cfg.active_terms() for k in ("adv", "adv_l1")) or hooks)
        with autocast(self.device, cfg.amp):
            x = gen(z)
            self.taps.reset()
            self.taps.active = True
            try:
                t = self.teacher.model(x)
            finally:
                self.taps.active = False
            self.passes += int(x.shape[0])
            s = None
            if need_s:
                assert student is not None
                with EvalMode(student):
                    flags = [p.requires_grad for p in student.parameters()]
                    for p in student.parameters():
                        p.requires_grad_(False)
                    try:
                        s = student(x)
                    finally:
                        for p, f in zip(student.parameters(), flags):
                            p.requires_grad_(f)
        st = TermState(t_logits=t, s_logits=s, taps=self.taps, temperature=cfg.temperature, bank=self.bank)
        total = x.new_zeros(())
        terms: dict[str, float] = {}
        for name, weight in cfg.active_terms().items():
            value = LOSS_TERMS.get(name)(st)
            if value is None:
                continue
            total = total + weight * value
            terms[name] = float(value.detach())
        ctx = BatchContext(x=x, t_logits=t, s_logits=s, engine=self, step=self.gen_step, phase="generator",
                           student=student, extra={"terms": terms})
        for h in hooks:
            extra = h.generator_loss(ctx)
            if extra is not None:
                total = total + extra
        for h in hooks:
            h.on_batch(ctx)
        terms["total"] = float(total.detach())
        opt.zero_grad(set_to_none=True)
        if total.requires_grad:
            self._scaler_g.scale(total).backward()
            self._scaler_g.step(opt)
            self._scaler_g.update()
        self.taps.reset()
        self.gen_step += 1
        return x.detach(), t.detach().float(), terms

    def _episode(self, n: int, steps: int, hooks: Sequence[Hook], with_student: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Synthesise one batch of ``n`` images after ``steps`` generator updates; returns (x, T(x), terms).

        The returned images are those the teacher scored in the last update (exact labels, no extra pass).
        """
        cfg = self.config
        last: tuple[torch.Tensor, torch.Tensor, dict[str, float]] | None = None
        if not cfg.meta:
            for _ in range(steps):
                last = self._gen_step(self.generator, self.opt_g, self._noise(n), hooks, with_student)
        else:
            assert self._work is not None
            work = self._work
            work.load_state_dict(self.generator.state_dict())
            z = self._noise(n)
            groups: list[dict[str, Any]] = [{"params": list(work.parameters()), "lr": cfg.lr_g}]
            if cfg.lr_z > 0:
                z.requires_grad_(True)
                groups.append({"params": [z], "lr": cfg.lr_z})
            opt = torch.optim.Adam(groups, betas=(0.5, 0.999))
            for _ in range(steps):
                last = self._gen_step(work, opt, z, hooks, with_student)
            if steps:
                with torch.no_grad():  # Reptile: meta <- meta + eps * (adapted - meta)
                    for pm, pw in zip(self.generator.parameters(), work.parameters()):
                        pm.add_(pw - pm, alpha=cfg.reptile_lr)
                    for bm, bw in zip(self.generator.buffers(), work.buffers()):
                        bm.copy_(bw)
        if last is None:
            gen = self.generator
            gen.train()
            with torch.no_grad(), autocast(self.device, cfg.amp):
                x = gen(self._noise(n)).float()
            return x, self.teacher_logits(x), {}
        return last

    def synthesize(self, n: int, steps: int | None = None, hooks: Sequence[Hook] = ()) -> torch.Tensor:
        """Make ``n`` raw-range images driven by the teacher only (no student terms).

        Non-meta presets: ``steps`` generator updates (default ``config.synth_steps``) on the engine's
        persistent generator, then ``n`` images sampled from it without further passes. Meta presets:
        each batch of ``config.batch_size`` is adapted from the meta generator for ``steps`` updates.
        The generator state carries over between calls (later calls are better). Returns a tensor on
        :attr:`device` in ``spec.value_range``.
        """
        cfg = self.config
        steps = cfg.synth_steps if steps is None else int(steps)
        if n <= 0:
            return torch.empty((0, *self.spec.shape), device=self.device)
        chunks: list[torch.Tensor] = []
        if cfg.meta:
            while sum(c.shape[0] for c in chunks) < n:
                b = min(cfg.batch_size, n - sum(c.shape[0] for c in chunks))
                x, _, _ = self._episode(b, steps, hooks, with_student=False)
                chunks.append(x)
        else:
            for _ in range(steps):
                self._gen_step(self.generator, self.opt_g, self._noise(cfg.batch_size), hooks, with_student=False)
            self.generator.train()
            with torch.no_grad(), autocast(self.device, cfg.amp):
                for i in range(0, n, cfg.batch_size):
                    chunks.append(self.generator(self._noise(min(cfg.batch_size, n - i))).float())
        return torch.cat(chunks)[:n]

    # ------------------------------------------------------------------ student phase
    def _student_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.pool):
            return self.pool.sample(n, self.rng)
        self.generator.train()
        with torch.no_grad(), autocast(self.device, self.config.amp):
            x = self.generator(self._noise(n)).float()
        return x, self.teacher_logits(x)

    def _student_step(self, x: torch.Tensor, t: torch.Tensor, hooks: Sequence[Hook]) -> dict[str, float]:
        student = self.student
        student.train()
        with autocast(self.device, self.config.amp):
            s = student(x)
        ctx = BatchContext(x=x, t_logits=t, s_logits=s, engine=self, step=self.student_step, phase="student",
                           student=student, extra={})
        replaced = [v for v in (h.student_loss(ctx) for h in hooks) if v is not None]
        loss = torch.stack([r.float() for r in replaced]).sum() if replaced else self.kd_loss(t, s)
        ctx.extra["loss"] = float(loss.detach())
        for h in hooks:
            h.on_batch(ctx)
        opt = self.opt_s
        opt.zero_grad(set_to_none=True)
        self._scaler_s.scale(loss).backward()
        self._scaler_s.step(opt)
        self._scaler_s.update()
        self.student_step += 1
        agree = float((s.detach().argmax(1) == t.argmax(1)).float().mean())
        return {"s_loss": float(loss.detach()), "agree": agree}

    # ------------------------------------------------------------------ the loop
    def _set_lr(self, frac: float) -> float:
        cfg = self.config
        lr = cfg.lr_s
        if cfg.lr_schedule == "cosine":
            lr = cfg.lr_s * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, frac))))
        for g in self.opt_s.param_groups:
            g["lr"] = lr
        return lr

    def run(self, budget_passes: int | None = None, budget_seconds: float | None = None,
            hooks: Sequence[Hook] = (), progress: bool = True, checkpoint_dir: str | Path | None = None,
            resume: bool = False, evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
            eval_every_passes: int | None = None, pause_at_passes: int | None = None) -> RunResult:
        """Alternate generator and student updates until the budget is spent.

        Args:
            budget_passes: stop once :attr:`passes` (counted from engine creation, including passes
                spent by ``synthesize`` or earlier runs) reaches this; to spend ``N`` more, pass
                ``engine.passes + N``. Default ``config.budget_passes`` when ``budget_seconds`` is not
                given either. The cosine learning-rate schedule spans this run's share of the budget.
            budget_seconds: stop after this many seconds of this run (a resumed run counts the
                seconds of its interrupted part).
            hooks: :class:`Hook` objects (defenses, probes).
            progress: rich progress bar with ETA on stderr.
            checkpoint_dir: where ``engine-state.pt`` is written every ``config.checkpoint_every``
                iterations, at the end, and on Ctrl-C.
            resume: continue from the checkpoint in ``checkpoint_dir`` (the config must match).
            evaluate: optional ``fn(student) -> {metric: value}`` recorded in the history
                (``kind="eval"``) every ``eval_every_passes`` passes and at the end.
            eval_every_passes: see ``evaluate``.
            pause_at_passes: stop early once :attr:`passes` reaches this, keeping the schedule of
                ``budget_passes`` (``stopped="paused"``); with ``checkpoint_dir``, a later ``resume=True``
                run with the same budget continues as if never paused (e.g. to fork ablations).

        Returns:
            :class:`RunResult`.

        Raises:
            KeyboardInterrupt: after Ctrl-C, once the checkpoint is written.
        """
        cfg = self.config
        if budget_passes is None and budget_seconds is None:
            budget_passes = cfg.budget_passes
        if budget_passes is not None and budget_passes <= 0 or budget_seconds is not None and budget_seconds <= 0:
            raise UsageError("the budget must be positive")
        self._run_start = (self.passes, self.seconds)
        if resume:
            if checkpoint_dir is None:
                raise UsageError("resume needs a checkpoint directory")
            state = load_checkpoint(checkpoint_dir)
            if state is not None:
                self.load_state_dict(state, hooks)
        run_passes0, run_seconds0 = self._run_start
        student = self.student
        _ = self.opt_s
        start_seconds = self.seconds
        t0 = time.perf_counter()
        next_eval = (self.passes + eval_every_passes) if eval_every_passes else None
        stopped = ""

        def frac() -> float:
            fp = (self.passes - run_passes0) / max(1, budget_passes - run_passes0) if budget_passes else 0.0
            fs = (self.seconds - run_seconds0) / budget_seconds if budget_seconds else 0.0
            return max(fp, fs)

        bar = _progress(progress)
        with bar, _Interrupt() as intr:
            task = bar.add_task(f"distill [{cfg.name}]", total=1000)
            while True:
                self.seconds = start_seconds + (time.perf_counter() - t0)
                if budget_passes is not None and self.passes >= budget_passes:
                    stopped = "budget_passes"
                    break
                if budget_seconds is not None and self.seconds - run_seconds0 >= budget_seconds:
                    stopped = "budget_seconds"
                    break
                if pause_at_passes is not None and self.passes >= pause_at_passes:
                    stopped = "paused"
                    break
                if intr.hit:
                    if checkpoint_dir is not None:
                        save_checkpoint(checkpoint_dir, self.state_dict(hooks))
                    raise KeyboardInterrupt
                self.budget_share = frac()
                lr = self._set_lr(self.budget_share)
                _, _, terms = self._one_iteration(hooks)
                self.seconds = start_seconds + (time.perf_counter() - t0)
                if self.iteration % cfg.log_every == 0:
                    self.history.append({"kind": "train", "iteration": self.iteration, "passes": self.passes,
                                         "seconds": round(self.seconds, 3), "lr_s": lr, **terms})
                if evaluate is not None and next_eval is not None and self.passes >= next_eval:
                    self._record_eval(evaluate)
                    next_eval += eval_every_passes  # type: ignore[operator]
                if checkpoint_dir is not None and self.iteration % cfg.checkpoint_every == 0:
                    save_checkpoint(checkpoint_dir, self.state_dict(hooks))
                bar.update(task, completed=int(1000 * min(1.0, frac())),
                           description=f"distill [{cfg.name}] passes={self.passes} agree={terms.get('agree', 0):.2f}")
        evals = [h for h in self.history if h["kind"] == "eval"]
        if evaluate is not None and (not evals or evals[-1]["passes"] != self.passes):
            self._record_eval(evaluate)
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, self.state_dict(hooks))
        student.eval()
        return RunResult(student=student, passes=self.passes, seconds=self.seconds, history=list(self.history),
                         stopped=stopped, notes=list(self.notes), terms=cfg.active_terms())

    def _one_iteration(self, hooks: Sequence[Hook]) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        cfg = self.config
        x, t, terms = self._episode(cfg.batch_size, cfg.gen_steps, hooks, with_student=True)
        self.pool.add(x, t)
        stats: dict[str, float] = {}
        for _ in range(cfg.kd_steps):
            xs, ts = self._student_batch(cfg.batch_size)
            stats = self._student_step(xs, ts, hooks)
        self.iteration += 1
        out = {f"g_{k}": v for k, v in terms.items()}
        out.update(stats)
        return x, t, out

    def _record_eval(self, evaluate: Callable[[nn.Module], dict[str, float]]) -> None:
        student = self.student
        with EvalMode(student), torch.random.fork_rng(devices=[]), torch.no_grad():
            metrics = evaluate(student)
        self.history.append({"kind": "eval", "iteration": self.iteration, "passes": self.passes,
                             "seconds": round(self.seconds, 3), **metrics})

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, hooks: Sequence[Hook] = ()) -> dict[str, Any]:
        """Everything needed to continue bit-identically on CPU."""
        return {
            "config": self.config.to_dict(), "seed": self.seed,
            "generator": self.generator.state_dict(), "opt_g": self.opt_g.state_dict(),
            "student": self.student.state_dict(), "opt_s": self.opt_s.state_dict(),
            "scaler_g": self._scaler_g.state_dict(), "scaler_s": self._scaler_s.state_dict(),
            "pool": self.pool.state_dict(), "bank": None if self.bank is None else self.bank.state_dict(),
            "rng": self.rng.get_state(), "torch_rng": torch.get_rng_state(),
            "passes": self.passes, "seconds": self.seconds, "iteration": self.iteration,
            "gen_step": self.gen_step, "student_step": self.student_step, "history": list(self.history),
            "hooks": [h.state_dict() for h in hooks],
            "run_start": list(self._run_start),
        }

    def load_state_dict(self, state: dict[str, Any], hooks: Sequence[Hook] = ()) -> None:
        """Restore :meth:`state_dict`; refuses a checkpoint made with other settings."""
        if state.get("config") != self.config.to_dict() or state.get("seed") != self.seed:
            raise UsageError("checkpoint was made with other engine settings or seed; cannot resume")
        self.generator.load_state_dict(state["generator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.student.load_state_dict(state["student"])
        self.opt_s.load_state_dict(state["opt_s"])
        self._scaler_g.load_state_dict(state["scaler_g"])
        self._scaler_s.load_state_dict(state["scaler_s"])
        self.pool.load_state_dict(state["pool"], self.device)
        if self.bank is not None and state.get("bank") is not None:
            self.bank.load_state_dict(state["bank"], self.device)
        self.rng.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        for key in ("passes", "iteration", "gen_step", "student_step"):
            setattr(self, key, int(state[key]))
        self.seconds = float(state["seconds"])
        self.history = list(state["history"])
        self._run_start = (int(state["run_start"][0]), float(state["run_start"][1]))
        for h, hs in zip(hooks, state.get("hooks", [])):
            h.load_state_dict(hs)


def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled, transient=False)
