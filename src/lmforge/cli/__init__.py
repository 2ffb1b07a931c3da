"""The `lmforge` command line: `main` parses, and one module per verb adds its flags and prints
what its job (lmforge.jobs) returns. Jobs are imported when a verb runs, so `lmforge --help`
does not import torch."""
