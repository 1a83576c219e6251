#!/usr/bin/env python
"""Train and test a model the RecBole way, plugin models (Hydra, Mamba4Rec, HSTU) included.

``python run_hydra.py --help`` lists the flags; ``recbole_hydra.cli`` is the command line, the
same as the installed ``recbole-hydra`` and ``python -m recbole_hydra``.
"""

import sys

from recbole_hydra.cli import main

if __name__ == "__main__":
    sys.exit(main())
