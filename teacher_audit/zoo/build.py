"""Build a zoo: train teachers from recipes and write ``<name>.safetensors`` + ``<name>.safetensors.card.json``.

Resumable by recipe: a teacher whose weights and card already exist is skipped, and both files are written
atomically (weights first, card last), so an interrupted build restarts where it stopped. Warm starts name
another teacher of the same build; it is built first when missing. Progress goes to stderr (rich) and,
optionally, one plain line per event to a log file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from teacher_audit.atomic import atomic_path, atomic_write_text
from teacher_audit.errors import UsageError
from teacher_audit.intake.spec import InputSpec
from teacher_audit.zoo.recipes import RECIPES, RecipeConfig, RecipeContext, Trained

CARD_SUFFIX = ".card.json"
LogFn = Callable[[str], None]


def teacher_paths(out: Path, name: str) -> tuple[Path, Path]:
    """(weights, card) paths of teacher ``name`` in ``out``."""
    w = out / f"{name}.safetensors"
    return w, w.with_name(w.name + CARD_SUFFIX)


def is_built(out: Path, name: str) -> bool:
    """True if both files of ``name`` exist in ``out``."""
    w, c = teacher_paths(out, name)
    return w.is_file() and c.is_file()


def make_card(cfg: RecipeConfig, trained: Trained) -> dict[str, Any]:
    """The card dict (schema of ``docs/card.md``) of a trained zoo teacher."""
    s = trained.spec
    return {
        "schema_version": 1,
        "name": cfg.name,
        "description": f"teacher-audit zoo teacher ({cfg.kind}, {cfg.arch}, {cfg.dataset}, seed {cfg.seed})",
        "arch": cfg.arch,
        "input": {"channels": s.channels, "height": s.height, "width": s.width,
                  "value_range": list(s.value_range), "mean": list(s.mean), "std": list(s.std)},
        "num_classes": s.num_classes,
        "class_names": list(s.class_names) if s.class_names else [str(i) for i in range(s.num_classes)],
        "ground_truth": trained.ground_truth,
    }


def save_teacher(out: Path, cfg: RecipeConfig, trained: Trained) -> tuple[Path, Path]:
    """Write weights (bare-net state_dict, safetensors) then card, both atomically."""
    from safetensors.torch import save_file

    w, c = teacher_paths(out, cfg.name)
    sd = {k: v.detach().cpu().contiguous() for k, v in trained.net.state_dict().items()}
    with atomic_path(w) as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt", "producer": "teacher-audit zoo"})
    atomic_write_text(c, json.dumps(make_card(cfg, trained), indent=2) + "\n")
    return w, c


def load_zoo_teacher(out: Path, name: str,
                     build_net: Callable[[str, int, int], nn.Module]) -> tuple[nn.Module, InputSpec, dict[str, Any]]:
    """Load a teacher this module wrote (our own trusted output): net, spec and card."""
    from safetensors.torch import load_file

    w, c = teacher_paths(out, name)
    card = json.loads(c.read_text())
    inp = card["input"]
    spec = InputSpec(channels=inp["channels"], height=inp["height"], width=inp["width"],
                     value_range=tuple(inp["value_range"]), mean=tuple(inp["mean"]), std=tuple(inp["std"]),
                     num_classes=card["num_classes"], class_names=card.get("class_names"))
    net = build_net(card["arch"], spec.num_classes, spec.channels)
    net.load_state_dict(load_file(str(w)))
    return net.eval(), spec, card


def _order(selected: list[RecipeConfig], known: dict[str, RecipeConfig]) -> list[RecipeConfig]:
    """Selected configs plus their warm-start ancestors, dependencies first."""
    seen: dict[str, RecipeConfig] = {}

    def visit(cfg: RecipeConfig, stack: tuple[str, ...]) -> None:
        if cfg.name in stack:
            raise UsageError(f"warm_start cycle: {' -> '.join(stack + (cfg.name,))}")
        if cfg.warm_start and cfg.warm_start not in seen:
            dep = known.get(cfg.warm_start)
            if dep is not None:
                visit(dep, stack + (cfg.name,))
        seen.setdefault(cfg.name, cfg)

    for cfg in selected:
        visit(cfg, ())
    return list(seen.values())


def build(out: str | Path, selected: Iterable[RecipeConfig], known: dict[str, RecipeConfig] | None = None,
          *, force: bool = False, log: LogFn | None = None, progress: bool = True,
          build_net: Callable[[str, int, int], nn.Module] | None = None) -> list[dict[str, Any]]:
    """Train every selected teacher not yet in ``out`` (and missing warm-start dependencies).

    Args:
        out: output folder.
        selected: configs to build.
        known: every config by name, to resolve ``warm_start`` dependencies (default: ``selected``).
        force: retrain even if the files exist.
        log: plain-text line logger (e.g. appends to ``build.log``).
        progress: show a rich progress bar on stderr.
        build_net: ``(arch, num_classes, in_channels) -> nn.Module`` (default: the architecture registry).

    Returns:
        One summary dict per teacher (name, status "built"/"skipped", card ground truth).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if build_net is None:
        from teacher_audit.intake.archs import build_arch as build_net  # type: ignore[no-redef]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sel = list(selected)
    table = dict(known or {})
    table.update({c.name: c for c in sel})
    plan = _order(sel, table)
    say = log or (lambda _m: None)
    console = Console(stderr=True)
    results: list[dict[str, Any]] = []

    def warm(name: str) -> tuple[nn.Module, InputSpec]:
        if not is_built(out, name):
            raise UsageError(f"warm start {name!r} is not built in {out} and no recipe of that name is known")
        net, spec, _ = load_zoo_teacher(out, name, build_net)  # type: ignore[arg-type]
        return net, spec

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=console, disable=not progress,
                  transient=False) as bar:
        for i, cfg in enumerate(plan, 1):
            if is_built(out, cfg.name) and not force:
                card = json.loads(teacher_paths(out, cfg.name)[1].read_text())
                results.append({"name": cfg.name, "status": "skipped", "ground_truth": card.get("ground_truth", {})})
                say(f"[{i}/{len(plan)}] {cfg.name}: already built, skipped")
                continue
            task = bar.add_task(f"[{i}/{len(plan)}] {cfg.name}", total=None, info="")
            last_log = [0.0]

            def prog(done: int, total: int, info: str, _t: int = task) -> None:
                bar.update(_t, completed=done, total=total, info=info)
                now = time.monotonic()
                if now - last_log[0] > 30 or done == total:
                    last_log[0] = now
                    say(f"  {cfg.name}: step {done}/{total} {info}")

            say(f"[{i}/{len(plan)}] {cfg.name}: training ({cfg.kind}, {cfg.arch}, seed {cfg.seed})")
            t0 = time.perf_counter()
            torch.manual_seed(cfg.seed)
            ctx = RecipeContext(warm=warm, build_net=build_net, progress=prog)  # type: ignore[arg-type]
            trained = RECIPES.get(cfg.kind)(cfg, ctx)
            trained.ground_truth["wall_seconds"] = round(time.perf_counter() - t0, 1)
            save_teacher(out, cfg, trained)
            gt = trained.ground_truth
            nums = " ".join(f"{k}={gt[k]}" for k in ("acc", "asr", "id_acc", "ood_acc", "clean_teacher_ood_acc")
                            if gt.get(k) is not None)
            say(f"[{i}/{len(plan)}] {cfg.name}: done in {gt['wall_seconds']} s: {nums}")
            bar.update(task, info=nums)
            results.append({"name": cfg.name, "status": "built", "ground_truth": gt})
    return results
