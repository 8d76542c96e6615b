"""asyncbind's benchmarks, run as ``python -m benchmarks <suite> [--quick]``.

Modelled on SQLAlchemy's ``examples/performance``: each suite is a small module whose docstring
says what it measures, each case's docstring is what its line prints, and every baseline (the raw
driver, plain SQLAlchemy, the peers) is measured in the same run. Each repetition runs every case
of a table once, and ratios are computed per repetition, then summarised as median (min-max).

Suites: ``routing``, ``peers``, ``schema``, ``etl``, ``scaling``, ``instructions``, ``twophase``,
``replicas``, ``tenants``, ``soak``, or ``all``. Peers and plotting need ``pip install
asyncbind[benchmarks]``, the instruction counts valgrind; without them those cases print
"skipped". ``soak`` is not a measurement but a check: it runs on private servers of its own,
restarts one, and its verdict (was an acknowledged row lost?) is the run's last line and sets the
exit status. ``replicas`` starts a PostgreSQL primary and two standbys of its own.

The soak uses the fault-injecting proxy of the tests (``tests/faultproxy.py``) and their private
servers (``tests/privateservers.py``), so run it from the repository root.
"""

SUITES = (
    "routing",
    "peers",
    "schema",
    "etl",
    "scaling",
    "instructions",
    "twophase",
    "replicas",
    "tenants",
    "soak",
)
