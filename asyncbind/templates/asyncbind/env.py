"""Alembic's environment for an AsyncBind, written by ``asyncbind db init``.

Each bind is migrated on its own async engine in its own migration context: that bind's MetaData
is the target of autogenerate, and its version table (``alembic_version``) lives in that bind's
own database. The AsyncBind comes from ``--app``, else the ``asyncbind_app`` option of
alembic.ini, else ``ASYNCBIND_APP``. Choose binds with ``-x bind=KEY`` (repeatable; ``default``
or an empty KEY for the default bind); without it, every bind.
Options of Alembic's ``context.configure()`` (``include_object=...``,
``compare_server_default=True``) go to ``run_migrations(context.config, ...)``.
"""

from logging.config import fileConfig

from alembic import context

from asyncbind.migrations import run_migrations

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

run_migrations(context.config)
