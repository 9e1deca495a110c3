"""``python -m devstack.nomad``: same as ``devstack nomad``."""

import sys

from .cli import main

sys.exit(main())
