# Alembic's configuration for the binds of an AsyncBind, written by `asyncbind db init`.
# The databases come from the AsyncBind, not from this file: `asyncbind --app ... db upgrade`,
# or `alembic -c ${config_path} upgrade head` (which uses asyncbind_app below).

[alembic]
script_location = ${script_location}
prepend_sys_path = .
path_separator = os

# Where your AsyncBind is (MODULE:ATTRIBUTE, as for `asyncbind --app`), for plain `alembic`;
# `asyncbind --app` overrides it, and when it is empty ASYNCBIND_APP is used.
asyncbind_app = ${asyncbind_app}

[post_write_hooks]

[loggers]
keys = root,sqlalchemy,alembic,alembic_plugins,asyncbind

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[logger_alembic_plugins]
level = WARNING
handlers =
qualname = alembic.runtime.plugins

[logger_asyncbind]
level = INFO
handlers =
qualname = asyncbind.migrations

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
