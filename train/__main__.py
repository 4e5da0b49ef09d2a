"""``python -m train RECIPE [options]``: runs one training recipe end to end.

Recipes are modules of ``train.recipes`` with ``add_parser(subparsers)`` (adds the recipe's
subcommand and options) and ``run(args) -> int``. They are imported lazily, so one recipe's
dependencies are not needed to run another, and a new recipe is one line in RECIPES.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from tinymm.errors import TinymmError

# Subcommand -> module defining add_parser(subparsers) and run(args).
RECIPES = {
    "speech": "train.recipes.speech",
    "vlm": "train.recipes.vlm",
}


def _add_recipe(subparsers: argparse._SubParsersAction, name: str, module_name: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        # Keep the other recipes usable; say why this one is not.
        stub = subparsers.add_parser(name, help=f"(unavailable: {e})")
        stub.set_defaults(_unavailable=f"recipe {name!r} cannot be imported from {module_name}: {e}")
        return
    module.add_parser(subparsers)
    subparsers.choices[name].set_defaults(_run=module.run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description="Train tinymm's models (see train/RESULTS.md).")
    subparsers = parser.add_subparsers(dest="recipe", required=True, metavar="RECIPE")
    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the recipe asked for (all of them for --help).
    wanted = [name for name in RECIPES if name in argv[:1]] or list(RECIPES)
    for name in wanted:
        _add_recipe(subparsers, name, RECIPES[name])
    args = parser.parse_args(argv)
    if getattr(args, "_unavailable", None):
        parser.error(args._unavailable)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except TinymmError as e:
        logging.getLogger("train").error("%s", e)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
