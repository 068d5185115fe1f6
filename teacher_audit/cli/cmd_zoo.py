"""``teacher-audit zoo list`` and ``teacher-audit zoo build``: the bench's teacher zoo.

``zoo build --out DIR --recipe NAME... [--recipe-file FILE] [--epochs N] [--seed S]`` trains the selected
teachers (built-in catalog and/or a TOML recipe file; names, shell globs or ``all``) into DIR as
``<name>.safetensors`` + ``<name>.safetensors.card.json``. Finished teachers are skipped (resumable);
``--force`` retrains. Progress on stderr, a summary table on stdout. Exit codes: 0 built, 2 error, 4 usage.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from teacher_audit.cli.app import app, err, guarded, out
from teacher_audit.errors import UsageError
from teacher_audit.exitcodes import ExitCode

zoo_app = typer.Typer(help="Train and list the bench's teacher zoo (clean, backdoored, NTL teachers).",
                      no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


def _fmt(v: object) -> str:
    return f"{100 * v:.1f}" if isinstance(v, float) else "-"


@zoo_app.command("list")
@guarded
def zoo_list(
    recipe_file: Optional[Path] = typer.Option(None, "--recipe-file", help="Also list the teachers of this TOML file."),
) -> ExitCode:
    """List the built-in zoo recipes (and those of a recipe file)."""
    from teacher_audit.zoo.catalog import ZOO
    from teacher_audit.zoo.recipe_file import load_recipe_file
    from teacher_audit.zoo.recipes import RECIPES

    table = dict(ZOO)
    if recipe_file is not None:
        table.update(load_recipe_file(recipe_file))
    t = Table(title="zoo recipes")
    for col in ("name", "kind", "arch", "dataset", "seed", "trigger / ood", "warm start"):
        t.add_column(col, no_wrap=col == "name")
    for cfg in table.values():
        extra = (cfg.trigger or {}).get("name") or cfg.ood or ""
        t.add_row(cfg.name, cfg.kind, cfg.arch, cfg.dataset, str(cfg.seed), str(extra), cfg.warm_start or "")
    out.print(t)
    out.print("recipe kinds: " + ", ".join(f"{n} ({RECIPES.meta(n).get('description', '')})" for n in RECIPES.names()))
    return ExitCode.PASS


@zoo_app.command("build")
@guarded
def zoo_build(
    out_dir: Path = typer.Option(..., "--out", help="Output folder for <name>.safetensors + .card.json."),
    recipe: list[str] = typer.Option([], "--recipe", metavar="NAME", help="Recipe name or glob (repeatable; 'all')."),
    recipe_file: Optional[Path] = typer.Option(None, "--recipe-file", help="TOML file of [[teacher]] recipes."),
    epochs: Optional[float] = typer.Option(None, "--epochs", min=0.001, help="Override epochs of the selected recipes."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the seed of the selected recipes."),
    force: bool = typer.Option(False, "--force", help="Retrain teachers that already exist."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads (default 1)."),
    log_file: Optional[Path] = typer.Option(None, "--log", help="Append plain progress lines to this file."),
) -> ExitCode:
    """Train the selected zoo teachers into --out (skips finished ones)."""
    import torch

    from teacher_audit.zoo.build import build
    from teacher_audit.zoo.catalog import ZOO
    from teacher_audit.zoo.recipe_file import load_recipe_file, select

    if not recipe and recipe_file is None:
        raise UsageError("give --recipe NAME (see 'teacher-audit zoo list') and/or --recipe-file FILE")
    known = dict(ZOO)
    pool = known
    if recipe_file is not None:
        from_file = load_recipe_file(recipe_file)
        known.update(from_file)
        pool = from_file if not recipe else known
    selected = select(pool, recipe)
    if epochs is not None or seed is not None:
        selected = [dataclasses.replace(c, **({"epochs": epochs, "steps": None} if epochs is not None else {}),
                                        **({"seed": seed} if seed is not None else {})) for c in selected]
    torch.set_num_threads(threads)
    fh = open(log_file, "a", buffering=1, encoding="utf-8") if log_file else None  # noqa: SIM115

    def say(msg: str) -> None:
        if fh is not None:
            fh.write(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} {msg}\n")
        if not err.is_terminal:
            err.print(msg, markup=False, highlight=False)

    try:
        results = build(out_dir, selected, known, force=force, log=say, progress=err.is_terminal)
    finally:
        if fh is not None:
            fh.close()
    t = Table(title=f"zoo in {out_dir}")
    for col in ("teacher", "kind", "status", "ACC %", "ASR %", "ID %", "OOD %", "clean OOD %", "train s"):
        t.add_column(col, no_wrap=col == "teacher")
    for r in results:
        g = r["ground_truth"]
        t.add_row(r["name"], str(g.get("kind", "")), r["status"], _fmt(g.get("acc")), _fmt(g.get("asr")),
                  _fmt(g.get("id_acc")), _fmt(g.get("ood_acc")), _fmt(g.get("clean_teacher_ood_acc")),
                  str(g.get("train_seconds", "")))
    out.print(t)
    return ExitCode.PASS
