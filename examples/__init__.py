"""Example controllers: small, complete, tested, and the starting point of a new one."""
