"""``python -m kvmap.bench``: kvmap-bench (kvmap.bench.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
