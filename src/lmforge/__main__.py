"""`python -m lmforge` (what torchrun launches) runs the CLI."""

import sys

from lmforge.cli.main import main

if __name__ == "__main__":  # not when a spawned worker process imports it
    sys.exit(main())
