<%!
from asyncbind.migrations import script_names
%>"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
# revision identifiers, used by Alembic.
revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}
<% names = script_names(config) %>
% for name in names:


def upgrade_${name}() -> None:
    ${context.get("%s_upgrades" % name, "pass")}


def downgrade_${name}() -> None:
    ${context.get("%s_downgrades" % name, "pass")}
% endfor


def _nothing() -> None:
    pass


def upgrade(bind: str) -> None:
    """Upgrade the schema of one bind (a bind this revision does not name has nothing to do)."""
    upgrades = {
% for name in names:
        ${repr(name)}: upgrade_${name},
% endfor
    }
    upgrades.get(bind, _nothing)()


def downgrade(bind: str) -> None:
    """Downgrade the schema of one bind."""
    downgrades = {
% for name in names:
        ${repr(name)}: downgrade_${name},
% endfor
    }
    downgrades.get(bind, _nothing)()
