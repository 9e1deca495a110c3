"""``python -m devstack.consul``: the same as ``devstack consul``."""

import sys

from devstack.consul.cli import main

sys.exit(main())
