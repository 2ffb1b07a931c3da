"""`python -m lmforge` (what torchrun launches) runs the CLI."""

import sys

from lmforge.cli.main import main

sys.exit(main())
