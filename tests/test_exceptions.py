"""The errors' messages: a list of bind keys names the default bind (key None) as such, since a
bare 'None' reads as 'no bind'; the attributes keep the keys themselves."""

from __future__ import annotations

from asyncbind import (
    BindErrors,
    PartialCommitError,
    TwoPhaseInDoubtError,
    UnknownBindError,
)
from asyncbind.exceptions import format_key, format_keys


def test_keys_are_listed_with_the_default_bind_named() -> None:
    assert format_key(None) == "the default bind" and format_key("users") == "'users'"
    assert format_keys(["users", None, "logs"]) == "the default bind, 'logs', 'users'"
    assert format_keys([]) == "none"


def test_a_partial_commit_names_the_default_bind_that_committed() -> None:
    error = PartialCommitError([None, "users"], "reports", ValueError("refused"), ["logs"])
    message = str(error)
    assert "Committed: the default bind, 'users'. Failed: 'reports' (ValueError: refused)." in (
        message
    )
    assert "Rolled back: 'logs'." in message and "None" not in message
    assert (error.committed, error.failed, error.rolled_back) == (
        (None, "users"),
        "reports",
        ("logs",),
    )

    lost = str(PartialCommitError([None], "reports", TimeoutError()))
    assert "Committed: the default bind." in lost
    assert "whether those of bind 'reports' did is unknown" in lost


def test_a_two_phase_commit_in_doubt_names_the_default_bind() -> None:
    cause = ConnectionResetError("gone")
    decided = TwoPhaseInDoubtError(True, [None], ["users"], cause)
    assert "committed: the default bind; prepared and still to commit: 'users'" in str(decided)
    unknown = TwoPhaseInDoubtError(None, [], [None, "users"], cause)
    assert "prepared on: the default bind, 'users'." in str(unknown)
    assert "None" not in str(decided) + str(unknown)
    assert unknown.in_doubt == (None, "users") and decided.committed == (None,)


def test_errors_over_several_binds_name_the_default_bind() -> None:
    errors = BindErrors("create_all", {None: OSError("down"), "users": OSError("down")})
    assert str(errors).startswith("create_all failed on bind(s) the default bind, 'users' (")
    assert "None" not in str(errors) and list(errors.errors) == [None, "users"]

    missing = UnknownBindError("reports", [None, "users"])
    assert "(configured: the default bind, 'users')" in str(missing)
    assert missing.configured == (None, "users")
