#!/usr/bin/env python
"""Train and test a model the RecBole way, plugin models (Hydra, Mamba4Rec, HSTU) included.

``python run_hydra.py --help`` lists the flags; ``recbole_hydra.cli`` is the command line.
"""

import sys
import warnings

# ray 2.6 (imported with RecBole) announces on every start that pkg_resources is deprecated.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from recbole_hydra.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
