"""`python -m lmforge` (what torchrun launches) runs the CLI."""

import sys

from lmforge.cli import main

sys.exit(main())
