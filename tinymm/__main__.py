"""``python -m tinymm``: the same as the ``tinymm`` command."""

from __future__ import annotations

import sys

from tinymm.cli import main

if __name__ == "__main__":
    sys.exit(main())
