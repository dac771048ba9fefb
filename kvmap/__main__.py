"""``python -m kvmap``: the ``kvmap`` command (kvmap.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
