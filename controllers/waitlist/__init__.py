"""waitlist: requests + Nomad's free capacity -> ``manticore/waiting/data`` (FIFO, paged, CAS).

The decision is :mod:`.plan` (pure), the capacity count :mod:`.capacity` (pure); the
controller that applies them is declared here.
"""
