"""Run directories: file names, atomic writes, checkpoints, loading a run."""
