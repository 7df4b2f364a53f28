"""Run the archsweep command line with ``python -m search``."""

from __future__ import annotations

import sys

from search.cli import main

if __name__ == "__main__":
    sys.exit(main())
