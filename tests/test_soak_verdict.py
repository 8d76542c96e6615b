"""The soak's accounting (``benchmarks/soakcheck.py``): which rows count as lost, and the
verdict line and exit status it ends with. The soak itself runs as ``python -m benchmarks soak``."""

from __future__ import annotations

from benchmarks.soakcheck import Rows, verdict

NAMES = {None: "PostgreSQL", "maria": "MariaDB"}
NO_LEAKS = {"idle in a transaction": {None: 0, "maria": 0}}


def test_every_acknowledged_row_found_is_no_loss_even_with_extra_rows() -> None:
    rows = {
        None: Rows({1: "commit", 2: "load"}, {1: "commit", 2: "load", 3: "load"}),
        "maria": Rows({4: "copy"}, {4: "copy"}),
    }
    assert rows[None].lost() == {}
    assert rows[None].unacknowledged() == {"load": 1}
    assert verdict(rows, NO_LEAKS, NAMES) == (0, "no acknowledged row lost")


def test_a_missing_acknowledged_row_is_lost_and_named_by_bind_and_operation() -> None:
    rows = {
        None: Rows({1: "commit", 2: "load", 3: "load", 5: "both"}, {1: "commit"}),
        "maria": Rows({4: "both"}, {4: "both"}),
    }
    assert rows[None].lost() == {"load": 2, "both": 1}
    status, line = verdict(rows, NO_LEAKS, NAMES)
    assert status == 1
    assert line == "LOST 3 acknowledged rows: the default bind (PostgreSQL) 3 of 4 (load 2, both 1)"

    rows = {None: Rows({}, {}), "maria": Rows({7: "copy, partial"}, {})}
    assert verdict(rows, NO_LEAKS, NAMES) == (
        1,
        "LOST 1 acknowledged row: 'maria' (MariaDB) 1 of 1 (copy, partial 1)",
    )


def test_a_rolled_back_row_found_or_a_leaked_connection_fails_the_run_too() -> None:
    rows = {None: Rows({1: "commit"}, {1: "commit", 2: "rollback"}), "maria": Rows({}, {})}
    assert verdict(rows, NO_LEAKS, NAMES) == (
        1,
        "no acknowledged row lost; but 1 rolled-back row(s) found",
    )
    rows = {None: Rows({1: "commit"}, {}), "maria": Rows({}, {})}
    leaks = {
        "checked out of the pool": {None: 0, "maria": 0},
        "idle in a transaction": {None: 2, "maria": 0},
    }
    assert verdict(rows, leaks, NAMES) == (
        1,
        "LOST 1 acknowledged row: the default bind (PostgreSQL) 1 of 1 (commit 1); "
        "but connections idle in a transaction: the default bind 2, 'maria' 0",
    )
