"""Training recipes run by ``python -m train RECIPE``: each module has ``add_parser(subparsers)`` and ``run(args)``."""
