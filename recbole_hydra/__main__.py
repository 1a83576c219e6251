"""``python -m recbole_hydra``: the command line of ``recbole_hydra.cli``, as ``recbole-hydra``
and ``run_hydra.py``."""

import sys

from recbole_hydra.cli import main

if __name__ == "__main__":
    sys.exit(main())
