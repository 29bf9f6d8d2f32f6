"""``xray-audit init RECIPE [DIR]``: a paper's evaluation as a commented study TOML and RECIPE.md."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from audit.cli.exit_codes import EXIT_OK

log = logging.getLogger("audit")


def add_parser(sub: argparse._SubParsersAction) -> None:
    init = sub.add_parser(
        "init",
        help="write a paper's evaluation (a recipe) as a study TOML and RECIPE.md",
        description=(
            "Write DIR/study.toml (every key annotated with the paper's wording, CAPITALISED placeholders "
            "for your paths) and DIR/RECIPE.md (how the paper's table maps onto the suite's metrics). "
            "Then `xray-audit run DIR/study.toml` and `xray-audit report RUN_DIR --layout RECIPE`."
        ),
    )
    init.add_argument("recipe", nargs="?", metavar="RECIPE", help="a recipe name (see --list)")
    init.add_argument("dir", nargs="?", type=Path, metavar="DIR", help="where to write (default: ./RECIPE)")
    init.add_argument("--list", action="store_true", help="list the recipes, one line each")
    init.add_argument(
        "--demo",
        type=Path,
        metavar="DIR",
        help="write the same study into DIR, wired to the embedded data (demo cohort and generators, or "
        "the pelvis phantom), ready to run",
    )
    init.add_argument("--force", action="store_true", help="overwrite DIR/study.toml and DIR/RECIPE.md")


def handle_init(args: argparse.Namespace, progress: bool) -> int:
    from audit.atomic import write_text
    from audit.config import ConfigError
    from audit.recipes.registry import RECIPES

    if args.list:
        width = max(len(n) for n in RECIPES)
        for name, r in RECIPES.items():
            print(f"{name:<{width}}  {r.summary}  [{r.paper}]")
        return EXIT_OK
    if not args.recipe:
        raise ConfigError(
            "init needs a RECIPE (one of: "
            + ", ".join(RECIPES)
            + "); `xray-audit init --list` describes them"
        )
    if args.recipe not in RECIPES:
        raise ConfigError(
            f"unknown recipe {args.recipe!r}; known recipes are {', '.join(RECIPES)} (see --list)"
        )
    recipe = RECIPES[args.recipe]
    if args.demo is not None and args.dir is not None:
        raise ConfigError(f"give DIR or --demo DIR, not both (got {args.dir} and --demo {args.demo})")
    out = (args.demo or args.dir or Path(recipe.name)).resolve()
    targets = [out / "study.toml", out / "RECIPE.md"]
    existing = [p for p in targets if p.exists()]
    if existing and not args.force:
        raise ConfigError(
            f"{', '.join(map(str, existing))} already exist(s); choose another DIR, or pass --force to overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    if args.demo is not None:
        demo = recipe.demo(out, progress)
        for note in demo.notes:
            log.info("%s", note)
    else:
        write_text(out / "study.toml", recipe.study_toml())
    write_text(out / "RECIPE.md", recipe.recipe_md())
    for path in targets:
        print(path)
    run_dir = "RUN_DIR" if args.demo is None else str(out / "run")
    log.info(
        "next: %sxray-audit run %s && xray-audit report %s --layout %s",
        "fill in the CAPITALISED placeholders of study.toml, then " if args.demo is None else "",
        out / "study.toml",
        run_dir,
        recipe.name,
    )
    return EXIT_OK
