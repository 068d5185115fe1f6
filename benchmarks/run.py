#!/usr/bin/env python
"""The one bench entry point: build (or reuse) the zoo, then run a named suite.

    python benchmarks/run.py --suite zoo                 # zoo quality table -> docs/benchmarks.md
    python benchmarks/run.py --suite all                 # every suite, zoo first
    python benchmarks/run.py --suite ntl -- --extra args  # args after -- go to the suite's main()
    python benchmarks/run.py --list

Suites are the modules ``benchmarks/suite_<name>.py`` that define ``main(argv: list[str] | None) -> int``.
Before the suite runs, every zoo teacher selected by ``--recipe`` (default: the whole built-in catalog,
``teacher_audit/zoo/catalog.py``) that is missing from ``--zoo`` (default ``zoo-cache/``; teachers moved to
``failed/`` after missing their quality target are not rebuilt) is trained on one
thread; finished teachers are reused (``--no-build`` skips this step).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def suites() -> dict[str, Path]:
    """Suite name -> module path, from ``benchmarks/suite_*.py``."""
    return {p.stem.removeprefix("suite_"): p for p in sorted(BENCH.glob("suite_*.py"))}


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def build_zoo(zoo: Path, patterns: list[str], threads: int) -> None:
    import torch

    from teacher_audit.zoo.build import build
    from teacher_audit.zoo.catalog import ZOO
    from teacher_audit.zoo.recipe_file import select

    torch.set_num_threads(threads)
    log = (zoo / "build.log")
    zoo.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1, encoding="utf-8") as fh:
        def say(msg: str) -> None:
            line = f"{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S} {msg}"
            fh.write(line + "\n")
            print(line, file=sys.stderr)

        failed = {p.name.split(".safetensors")[0] for p in (zoo / "failed").glob("*.safetensors.card.json")}
        todo = [c for c in select(ZOO, patterns) if c.name not in failed]
        for name in sorted(failed & set(ZOO)):
            say(f"{name}: in failed/ (built, missed its target), not rebuilt")
        build(zoo, todo, ZOO, log=say, progress=False)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", help="suite name (see --list) or 'all'")
    ap.add_argument("--list", action="store_true", help="list suites and exit")
    ap.add_argument("--zoo", type=Path, default=ROOT / "zoo-cache", help="zoo folder (default zoo-cache/)")
    ap.add_argument("--recipe", action="append", default=[], help="zoo recipes to ensure (globs; default all)")
    ap.add_argument("--no-build", action="store_true", help="use the zoo as it is")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for zoo training (default 1)")
    args = ap.parse_args(argv)
    found = suites()
    if args.list or not args.suite:
        print("suites: " + ", ".join(found))
        return 0
    names = (["zoo"] + [n for n in found if n != "zoo"]) if args.suite == "all" else [args.suite]
    for n in names:
        if n not in found:
            print(f"unknown suite {n!r}; known: {', '.join(found)}", file=sys.stderr)
            return 4
    sys.path.insert(0, str(ROOT))
    if not args.no_build:
        build_zoo(args.zoo, args.recipe or ["all"], args.threads)
    rc = 0
    for n in names:
        mod = load(found[n])
        if not hasattr(mod, "main"):
            print(f"suite {n} has no main(argv)", file=sys.stderr)
            return 2
        code = mod.main(extra if args.suite != "all" else [])
        rc = max(rc, int(code or 0))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
