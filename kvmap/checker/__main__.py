"""``python -m kvmap.checker``: kvmap-check (kvmap.checker.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
