"""A torchrun worker that runs `lmforge ...` but fails on rank 1 at its second training step.

tests/train/test_ddp.py starts it to check that one failing rank takes the whole job down,
with its message, instead of leaving the other ranks waiting in a collective.
"""

import os
import sys

from lmforge.cli.main import main
from lmforge.errors import DataError
from lmforge.train.trainer import Trainer

FAIL_AT_STEP = 1


def _failing_step(original):
    def step(self: Trainer, index: int):
        if index == FAIL_AT_STEP:
            raise DataError("shard 3 cannot be read on this node (injected failure)")
        return original(self, index)

    return step


if __name__ == "__main__":
    if os.environ.get("RANK") == "1":
        Trainer._step = _failing_step(Trainer._step)
    sys.exit(main(sys.argv[1:]))
