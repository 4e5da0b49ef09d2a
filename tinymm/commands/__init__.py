"""Subcommands of the ``tinymm`` command, one module each.

A subcommand module exposes:

- ``add_parser(subparsers) -> argparse.ArgumentParser``: add its parser (name, help,
  arguments) to the ``subparsers`` of ``tinymm.cli`` and return it; cli.py adds ``--json``
  and ``-v`` to it;
- ``run(args) -> int``: do the work, print the result (one JSON object to stdout when
  ``args.json``) and return the exit code. Raise a TinymmError for anything the user can fix;
  cli.py prints it as one line and exits with its code.

Import heavy packages (numpy, onnxruntime, ...) inside ``run()``, not at module level, so that
``tinymm --help`` stays fast. Register a new module in ``tinymm.cli.COMMAND_MODULES``.
"""
