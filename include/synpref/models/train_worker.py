"""Entry point of one data-parallel RM training process: ``python -m synpref.models.train_worker <job dir>``,
started by ``torchrun`` from ``synpref.models.reward_model._train_launched``."""

import sys
from pathlib import Path

from synpref.models.reward_model import train_launched_worker

if __name__ == "__main__":
    train_launched_worker(Path(sys.argv[1]))
