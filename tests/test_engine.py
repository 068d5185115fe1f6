"""Synthesis engine: presets learn, BN prior falls back, hooks work, runs resume bit-identically."""

from __future__ import annotations

import copy

import pytest
import torch

from teacher_audit.intake.spec import InputSpec
from teacher_audit.synth import PRESETS, BatchContext, Engine, EngineConfig, Hook
from teacher_audit.synth.tiny import InterruptAt, TinyCNN, random_teacher
from teacher_audit.teacher import Teacher


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return random_teacher(bn=True)


def small(name: str) -> EngineConfig:
    cfg = PRESETS.get(name)()
    cfg.batch_size = 32
    cfg.ngf = 8  # a narrow generator keeps the tests fast
    cfg.log_every = 1
    return cfg


def student(seed: int = 0) -> TinyCNN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyCNN()


def iterations(cfg: EngineConfig, n: int) -> int:
    """Teacher passes of ``n`` iterations (replay presets label only their synthesised batch)."""
    per = cfg.gen_steps + (0 if cfg.pool_size else cfg.kd_steps)
    return cfg.batch_size * per * n


def held_out_kd(engine: Engine, student: torch.nn.Module, x: torch.Tensor) -> float:
    student.eval()
    with torch.no_grad():
        return float(engine.kd_loss(engine.teacher.model(x), student(x)))


@pytest.mark.parametrize("preset", PRESETS.names())
def test_each_preset_lowers_student_loss(preset: str, teacher: Teacher) -> None:
    """The preset's own KD loss, on fresh samples of its final generator, falls below the untrained student's."""
    cfg = small(preset)
    engine = Engine(teacher, cfg, student=student(), device="cpu", seed=0)
    initial = copy.deepcopy(engine.student)
    result = engine.run(budget_passes=iterations(cfg, 8), progress=False)
    assert result.passes >= iterations(cfg, 8) and engine.iteration == 8
    x = engine.synthesize(128, steps=0)  # held out: fresh noise, no update
    before, after = held_out_kd(engine, initial, x), held_out_kd(engine, result.student, x)
    assert after < 0.7 * before, (preset, before, after)
    train = [h for h in result.history if h["kind"] == "train"]
    assert train and all(torch.isfinite(torch.tensor(h["s_loss"])) for h in train)


@pytest.mark.parametrize("shape,vrange", [((1, 28, 28), (0.0, 1.0)), ((3, 32, 32), (-1.0, 1.0)),
                                          ((3, 64, 64), (0.0, 255.0)), ((3, 20, 36), (0.0, 1.0))])
def test_synthesize_follows_spec(shape: tuple[int, int, int], vrange: tuple[float, float]) -> None:
    c, h, w = shape
    spec = InputSpec(channels=c, height=h, width=w, value_range=vrange, mean=(0.5,) * c, std=(0.5,) * c)
    t = Teacher.from_net(TinyCNN(in_channels=c), spec)
    engine = Engine(t, small("dfq"), device="cpu")
    x = engine.synthesize(40, steps=1)
    assert x.shape == (40, c, h, w)
    assert float(x.min()) >= vrange[0] and float(x.max()) <= vrange[1]
    assert engine.passes == 32  # one generator step on one batch; sampling costs no teacher pass


def test_bnless_teacher_turns_bn_term_off() -> None:
    t = random_teacher(bn=False)
    engine = Engine(t, small("dfq"), student=student(), device="cpu")
    assert not engine.bn_prior_available
    assert any("BatchNorm" in n for n in engine.notes)
    result = engine.run(budget_passes=32 * 6 * 2, progress=False)
    assert any("BatchNorm" in n for n in result.notes)
    assert all("g_bn" not in h for h in result.history)
    with_bn = Engine(random_teacher(bn=True), small("dfq"), student=student(), device="cpu")
    assert with_bn.bn_prior_available and not with_bn.notes
    assert all("g_bn" in h for h in with_bn.run(budget_passes=32 * 6, progress=False).history)


class Recorder(Hook):
    def __init__(self, bonus: float = 0.0, freeze: bool = False):
        self.calls: dict[str, int] = {"generator": 0, "student": 0, "gen_loss": 0, "student_loss": 0}
        self.bonus, self.freeze = bonus, freeze

    def generator_loss(self, ctx: BatchContext) -> torch.Tensor | None:
        self.calls["gen_loss"] += 1
        assert ctx.x.requires_grad and ctx.phase == "generator"
        return ctx.x.sum() * 0 + self.bonus if self.bonus else None

    def student_loss(self, ctx: BatchContext) -> torch.Tensor | None:
        self.calls["student_loss"] += 1
        assert ctx.s_logits is not None and not ctx.x.requires_grad
        return (ctx.s_logits * 0).sum() if self.freeze else None

    def on_batch(self, ctx: BatchContext) -> None:
        self.calls[ctx.phase] += 1


def test_hooks_are_called_and_can_add_and_replace_losses(teacher: Teacher) -> None:
    cfg = small("dfq")
    cfg.weight_decay = 0.0
    cfg.lr_schedule = "constant"
    engine = Engine(teacher, cfg, student=student(), device="cpu")
    before = {k: v.clone() for k, v in engine.student.state_dict().items()}
    hook = Recorder(bonus=1000.0, freeze=True)
    result = engine.run(budget_passes=32 * 6 * 3, hooks=[hook], progress=False)
    assert hook.calls == {"generator": 3, "student": 15, "gen_loss": 3, "student_loss": 15}
    assert all(h["g_total"] > 999 for h in result.history if h["kind"] == "train")  # the term was added
    after = engine.student.state_dict()
    params = [k for k, _ in engine.student.named_parameters()]
    assert all(torch.equal(before[k], after[k]) for k in params)  # zero replacement loss: no learning
    plain = Engine(teacher, cfg, student=student(), device="cpu")
    assert all(torch.equal(before[k], plain.student.state_dict()[k]) for k in params)
    plain.run(budget_passes=32 * 6 * 3, hooks=[Recorder()], progress=False)
    assert not all(torch.equal(before[k], plain.student.state_dict()[k]) for k in params)


@pytest.mark.parametrize("preset", ["dfq", "fast"])
def test_interrupted_run_resumes_to_the_same_student(preset: str, teacher: Teacher, tmp_path) -> None:
    budget = iterations(small(preset), 8)
    ref = Engine(teacher, small(preset), student=student(), device="cpu", seed=3)
    ref_student = ref.run(budget_passes=budget, progress=False).student
    ckpt = tmp_path / "ckpt"
    first = Engine(teacher, small(preset), student=student(), device="cpu", seed=3)
    with pytest.raises(KeyboardInterrupt):
        first.run(budget_passes=budget, progress=False, checkpoint_dir=ckpt, hooks=[InterruptAt(at=22)])
    assert (ckpt / "engine-state.pt").exists() and first.passes < budget
    second = Engine(teacher, small(preset), student=student(), device="cpu", seed=3)
    result = second.run(budget_passes=budget, progress=False, checkpoint_dir=ckpt, resume=True)
    assert result.passes == ref.passes
    for (k, a), b in zip(ref_student.state_dict().items(), result.student.state_dict().values()):
        assert torch.equal(a, b), k


def test_paused_run_resumes_to_the_same_student(teacher: Teacher, tmp_path) -> None:
    budget = iterations(small("fast"), 8)
    ref = Engine(teacher, small("fast"), student=student(), device="cpu", seed=5)
    ref_student = ref.run(budget_passes=budget, progress=False).student
    first = Engine(teacher, small("fast"), student=student(), device="cpu", seed=5)
    paused = first.run(budget_passes=budget, progress=False, checkpoint_dir=tmp_path, pause_at_passes=budget // 2)
    assert paused.stopped == "paused" and budget // 2 <= paused.passes < budget
    second = Engine(teacher, small("fast"), student=student(), device="cpu", seed=5)
    result = second.run(budget_passes=budget, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert result.stopped == "budget_passes" and result.passes == ref.passes
    for (k, a), b in zip(ref_student.state_dict().items(), result.student.state_dict().values()):
        assert torch.equal(a, b), k


def test_resume_refuses_other_settings(teacher: Teacher, tmp_path) -> None:
    Engine(teacher, small("dfq"), student=student(), device="cpu").run(
        budget_passes=32 * 6, progress=False, checkpoint_dir=tmp_path)
    other = Engine(teacher, small("zskt"), student=student(), device="cpu")
    from teacher_audit.errors import UsageError

    with pytest.raises(UsageError):
        other.run(budget_passes=32 * 12, progress=False, checkpoint_dir=tmp_path, resume=True)


def test_second_run_continues_from_current_passes(teacher: Teacher) -> None:
    cfg = small("dfq")
    engine = Engine(teacher, cfg, student=student(), device="cpu")
    engine.synthesize(16, steps=1)
    spent = engine.passes
    first = engine.run(budget_passes=spent + iterations(cfg, 2), progress=False)
    assert engine.iteration == 2 and first.passes == spent + iterations(cfg, 2)
    lrs = [h["lr_s"] for h in first.history if h["kind"] == "train"]
    assert lrs[0] == cfg.lr_s  # the cosine schedule starts at this run's start, not at engine creation
    second = engine.run(budget_passes=engine.passes + iterations(cfg, 1), budget_seconds=3600, progress=False)
    assert engine.iteration == 3 and second.stopped == "budget_passes"
