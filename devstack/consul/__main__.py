"""``python -m devstack.consul``: the same as ``devstack consul``."""

import sys

from devstack.cli import main

sys.exit(main(["consul", *sys.argv[1:]]))
