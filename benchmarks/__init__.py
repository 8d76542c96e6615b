"""asyncbind's benchmarks, run as ``python -m benchmarks <suite> [--quick]``.

Modelled on SQLAlchemy's ``examples/performance``: each suite is a small module whose docstring
says what it measures, each case's docstring is what its line prints, and every baseline (the raw
driver, plain SQLAlchemy, the peers) is measured in the same run. Each repetition runs every case
of a table once, and ratios are computed per repetition, then summarised as median (min-max).

Suites: ``routing``, ``peers``, ``schema``, ``etl``, ``scaling``, ``instructions``, or ``all``.
Peers and plotting need ``pip install asyncbind[benchmarks]``, the instruction counts valgrind;
without them those cases print "skipped".

The package also holds the fault-injecting proxy and the soak script, run as
``python -m benchmarks.<name>``.
"""

SUITES = ("routing", "peers", "schema", "etl", "scaling", "instructions")
