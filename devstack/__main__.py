"""``python -m devstack``: the same as the ``devstack`` command (how ``devstack up`` starts
its children, with the interpreter it runs on)."""

import sys

from devstack.cli import main

sys.exit(main())
