"""Database servers of a test's or benchmark's own, to stop, kill and restart at will.

``PostgreSQLServer(port)`` and ``MariaDBServer(port)`` make a new server in a temporary directory,
from the Debian binaries, listening on ``127.0.0.1:port`` only: PostgreSQL with user ``postgres``
and trust authentication, MariaDB with ``root`` and no password (real grant tables, so that users
can be added). Never the shared servers, which other work depends on.

    with PostgreSQLServer(25470) as server:          # made, started, and ready
        url = server.url("postgres")                  # postgresql://postgres@127.0.0.1:25470/...
        server.restart()                              # a clean stop, then start
        server.restart(kill=True)                     # SIGKILL, then start (crash recovery)
    # stopped and its directory removed, also on error or Ctrl-C

``async with`` and the ``a``-prefixed methods (``astart``, ``astop``, ``akill``, ``arestart``,
``aremove``) do the same without blocking the event loop.

Each server runs as the database's own OS user (``postgres``, ``mysql``) when started by root, in
a process group of its own (so a Ctrl-C in the terminal reaches only the code that owns it, which
then stops it), and gets SIGKILL if the thread that started it ends first: a test run that is
itself killed leaves no server running behind (only its temporary directory). Start servers from a
thread that outlives them (the main thread, or the event loop's). Missing binaries raise
:class:`ServerNotInstalledError`, naming the Debian package to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import ClassVar

import sqlalchemy as sa

__all__ = [
    "MariaDBServer",
    "PgBouncerServer",
    "PostgreSQLServer",
    "PostgreSQLStandby",
    "PrivateServer",
    "ServerNotInstalledError",
    "ServerStartError",
    "alive",
    "find_mariadb",
    "find_postgresql",
]

HOST = "127.0.0.1"
#: Seconds between two readiness probes while a server starts.
_POLL = 0.05
#: Lines of a server's log quoted in an error.
_LOG_LINES = 20


class ServerNotInstalledError(RuntimeError):
    """The server's binaries (or its OS user) are not on this machine."""


class ServerStartError(RuntimeError):
    """A server did not start, or did not accept connections in time."""


def find_postgresql(root: Path = Path("/usr/lib/postgresql")) -> Path:
    """The ``bin`` directory of the newest PostgreSQL under ``root`` (Debian's layout)."""
    versions = []
    if root.is_dir():
        for child in root.iterdir():
            bindir = child / "bin"
            if child.name.isdigit() and all(
                (bindir / tool).is_file() for tool in ("initdb", "postgres", "pg_isready")
            ):
                versions.append((int(child.name), bindir))
    if not versions:
        raise ServerNotInstalledError(
            f"No PostgreSQL server binaries under '{root}' (looked for "
            f"'{root}/<version>/bin/initdb', 'postgres' and 'pg_isready'). Install them: "
            "apt-get install postgresql"
        )
    return max(versions)[1]


def find_mariadb(path: str = "/usr/sbin:/usr/bin") -> tuple[Path, Path]:
    """``mariadbd`` and ``mariadb-install-db`` found on ``path``."""
    found = [shutil.which(tool, path=path) for tool in ("mariadbd", "mariadb-install-db")]
    if None in found:
        raise ServerNotInstalledError(
            f"No MariaDB server binaries on '{path}' (looked for 'mariadbd' and "
            "'mariadb-install-db'). Install them: apt-get install mariadb-server"
        )
    server, install = found
    return Path(str(server)), Path(str(install))


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex((HOST, port)) == 0


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # "pid (command) state ...": the command may hold spaces and parentheses.
    return stat[stat.rindex(")") + 2] != "Z"


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs, as far as they are running."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            threads = list(Path(f"/proc/{parent}/task").glob("*/children"))
        except OSError:  # it exited meanwhile (ProcessLookupError): no children to find
            threads = []
        for tasks in threads:
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                todo += [int(child) for child in tasks.read_text().split()]
        if parent != pid:
            found.append(parent)
    return found


class PrivateServer:
    """One server of a kind: its directory, its process, and how to start and stop it."""

    name: ClassVar[str]
    """How messages name the server."""
    backend: ClassVar[str]
    """SQLAlchemy's name of its dialect (``postgresql``, ``mysql``)."""
    package: ClassVar[str]
    """The Debian package with its binaries."""
    os_user: ClassVar[str]
    """The OS user it runs as when started by root."""
    stop_signal: ClassVar[signal.Signals]
    """The signal that shuts it down cleanly."""

    def __init__(self, port: int, *, start_timeout: float = 60.0, stop_timeout: float = 60.0):
        self.port = port
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.directory: Path | None = None
        """The temporary directory with the data, the socket and ``server.log``."""
        self.process: subprocess.Popen[bytes] | None = None
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam(self.os_user)
            except KeyError:
                raise ServerNotInstalledError(
                    f"There is no OS user '{self.os_user}' for the {self.name} server to run as "
                    f"(it refuses to run as root). Install the server, which adds the user: "
                    f"apt-get install {self.package}"
                ) from None
        if shutil.which("setpriv") is None:
            raise ServerNotInstalledError(
                "'setpriv' is missing (it starts the server as its own user and stops it when "
                "its owner dies). Install it: apt-get install util-linux"
            )

    # -- what each server does differently -------------------------------------------------------

    def url(self, database: str | None = None) -> sa.URL:
        """Its URL as the admin user, without a driver (asyncbind picks the async one)."""
        raise NotImplementedError

    def _initialise(self, data: Path) -> None:
        raise NotImplementedError

    def _command(self, data: Path) -> list[str]:
        raise NotImplementedError

    def _accepts_connections(self) -> bool:
        raise NotImplementedError

    # -- state -----------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The server's main process id while it runs."""
        if self.process is None or self.process.poll() is not None:
            return None
        return self.process.pid

    def process_ids(self) -> list[int]:
        """The server's process and those it started (PostgreSQL's backends), while it runs."""
        pid = self.pid
        return [] if pid is None else [pid, *_children(pid)]

    @property
    def log(self) -> Path | None:
        return None if self.directory is None else self.directory / "server.log"

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.pid else "stopped"
        return f"<{type(self).__name__} {HOST}:{self.port} {state}>"

    # -- lifecycle, blocking ---------------------------------------------------------------------

    def create(self) -> None:
        """Make the temporary directory and an empty data directory in it (once)."""
        if self.directory is not None:
            return
        directory = Path(tempfile.mkdtemp(prefix=f"asyncbind_{self.backend}_{self.port}_"))
        try:
            if self._user is not None:
                os.chown(directory, self._user.pw_uid, self._user.pw_gid)
            self._initialise(directory / "data")
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self.directory = directory

    def start(self) -> None:
        """Start it and wait (at most ``start_timeout``) until it accepts connections."""
        self._prepare()
        self._launch()
        self._wait_until_ready()

    def stop(self) -> None:
        """Shut it down cleanly; past ``stop_timeout``, kill it. Does nothing when stopped."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        processes = self.process_ids()
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(self.stop_signal)
        try:
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        self._wait_gone(processes)

    def kill(self) -> None:
        """SIGKILL the server and every process it started, as a crash would, and wait until
        they are gone. Does nothing when stopped."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        processes = self.process_ids()
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()
        self._wait_gone(processes)

    def restart(self, *, kill: bool = False) -> None:
        """Stop it (cleanly, or with SIGKILL when ``kill``) and start it again on the same data."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    def remove(self) -> None:
        """Stop it and delete its directory, data and log included."""
        try:
            self.stop()
        finally:
            directory, self.directory = self.directory, None
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> PrivateServer:
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    # -- lifecycle, async ------------------------------------------------------------------------

    async def astart(self) -> None:
        """:meth:`start` without blocking the event loop."""
        await asyncio.to_thread(self._prepare)
        # Here, not in a worker thread: the server gets SIGKILL when the thread that started it
        # ends, and the event loop's thread lives as long as the servers it uses.
        self._launch()
        await asyncio.to_thread(self._wait_until_ready)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def akill(self) -> None:
        await asyncio.to_thread(self.kill)

    async def arestart(self, *, kill: bool = False) -> None:
        if kill:
            await self.akill()
        else:
            await self.astop()
        await self.astart()

    async def aremove(self) -> None:
        await asyncio.to_thread(self.remove)

    async def __aenter__(self) -> PrivateServer:
        try:
            await self.astart()
        except BaseException:
            # Shielded: a cancelled start still stops what it started and removes the data.
            await asyncio.shield(self.aremove())
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.aremove())

    # -- internals -------------------------------------------------------------------------------

    def _prepare(self) -> None:
        if self.pid is not None:
            raise ServerStartError(f"{self!r} is already running; stop it first.")
        if _port_in_use(self.port):
            raise ServerStartError(
                f"Port {self.port} on {HOST} is already in use, so the {self.name} server "
                "cannot listen there. Pick another port, or stop what listens there (an earlier "
                "run's server?)."
            )
        self.create()

    def _as_server_user(self, command: list[str]) -> list[str]:
        """``command`` run as the server's OS user (when we are root), killed when we die."""
        wrapper = ["setpriv", "--pdeathsig=KILL"]
        if self._user is not None:
            wrapper += [f"--reuid={self.os_user}", f"--regid={self.os_user}", "--init-groups"]
        return [*wrapper, "--", *command]

    def _run(self, command: list[str], what: str, cwd: Path) -> None:
        """Run a set-up tool to its end as the server's user; its output goes in the error."""
        result = subprocess.run(
            self._as_server_user(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            timeout=self.start_timeout,
            check=False,
        )
        if result.returncode != 0:
            output = result.stdout.decode(errors="replace").strip().splitlines()[-_LOG_LINES:]
            raise ServerStartError(
                f"{what} failed with exit status {result.returncode}: "
                f"{' '.join(command)}\n" + "\n".join(output)
            )

    def _launch(self) -> None:
        assert self.directory is not None and self.log is not None
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self._as_server_user(self._command(self.directory / "data")),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
            )

    def _wait_until_ready(self) -> None:
        process = self.process
        assert process is not None
        deadline = time.monotonic() + self.start_timeout
        try:
            while True:
                status = process.poll()
                if status is not None:
                    raise ServerStartError(
                        f"The {self.name} server for port {self.port} exited with status "
                        f"{status} while starting. {self._log_tail()}"
                    )
                if self._accepts_connections():
                    return
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"The {self.name} server on port {self.port} did not accept connections "
                        f"within {self.start_timeout:g}s. {self._log_tail()}"
                    )
                time.sleep(_POLL)
        except BaseException:
            self.kill()
            raise

    def _wait_gone(self, processes: list[int]) -> None:
        """Wait (bounded) until none of ``processes`` runs: a new server refuses the data
        directory while a process of the old one lives. Past the bound, kill what is left."""
        deadline = time.monotonic() + self.stop_timeout
        while left := [pid for pid in processes if alive(pid)]:
            if time.monotonic() > deadline:
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                return
            time.sleep(_POLL)

    def _log_tail(self) -> str:
        log = self.log
        if log is None or not log.exists():
            return "It wrote no log."
        lines = log.read_text(errors="replace").strip().splitlines()[-_LOG_LINES:]
        return f"The end of its log '{log}':\n" + "\n".join(lines)


class PostgreSQLServer(PrivateServer):
    """A PostgreSQL cluster: user ``postgres``, trust authentication, database ``postgres``."""

    name = "PostgreSQL"
    backend = "postgresql"
    package = "postgresql"
    os_user = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: sessions are ended and rolled back

    def __init__(self, port: int, *, start_timeout: float = 60.0, stop_timeout: float = 60.0):
        self.bindir = find_postgresql()
        super().__init__(port, start_timeout=start_timeout, stop_timeout=stop_timeout)

    def url(self, database: str | None = "postgres") -> sa.URL:
        return sa.URL.create(
            "postgresql", username="postgres", host=HOST, port=self.port, database=database
        )

    def _initialise(self, data: Path) -> None:
        self._run(
            [
                str(self.bindir / "initdb"),
                f"--pgdata={data}",
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            f"{self.name} initdb",
            data.parent,
        )

    def _command(self, data: Path) -> list[str]:
        assert self.directory is not None
        settings = {
            "listen_addresses": HOST,
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
            "shared_buffers": "16MB",
            "max_connections": "100",
            # Commits still reach the kernel before they are acknowledged, so a killed server
            # loses nothing; only a crash of the machine would.
            "fsync": "off",
            "full_page_writes": "off",
            # A standby can be made from it (pg_basebackup -X stream) and serve reads.
            "wal_level": "replica",
            "max_wal_senders": "5",
            "hot_standby": "on",
        }
        command = [str(self.bindir / "postgres"), "-D", str(data)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def _accepts_connections(self) -> bool:
        probe = subprocess.run(
            [str(self.bindir / "pg_isready"), "-q", "-h", HOST, "-p", str(self.port), "-t", "2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return probe.returncode == 0


class PostgreSQLStandby(PostgreSQLServer):
    """A hot standby of ``primary`` (running), streaming its WAL: made with
    ``pg_basebackup -R``, it serves reads and refuses writes.

        with PostgreSQLServer(25510) as primary, PostgreSQLStandby(25511, primary) as standby:
            ...  # standby.url() answers SELECT pg_is_in_recovery() with true
    """

    def __init__(
        self,
        port: int,
        primary: PostgreSQLServer,
        *,
        start_timeout: float = 60.0,
        stop_timeout: float = 60.0,
    ):
        self.primary = primary
        super().__init__(port, start_timeout=start_timeout, stop_timeout=stop_timeout)

    def _initialise(self, data: Path) -> None:
        self._run(
            [
                str(self.bindir / "pg_basebackup"),
                f"--pgdata={data}",
                f"--host={HOST}",
                f"--port={self.primary.port}",
                "--username=postgres",
                "--wal-method=stream",
                "--write-recovery-conf",  # standby.signal and primary_conninfo
                "--checkpoint=fast",
                "--no-sync",
            ],
            f"{self.name} pg_basebackup",
            data.parent,
        )


class MariaDBServer(PrivateServer):
    """A MariaDB server: ``root`` with no password over TCP, grant tables on."""

    name = "MariaDB"
    backend = "mysql"
    package = "mariadb-server"
    os_user = "mysql"
    stop_signal = signal.SIGTERM
    #: For the set-up and the server alike (the redo log size must match). At each commit the
    #: log is written to the kernel, which a killed server does not lose.
    OPTIONS = (
        "--innodb-buffer-pool-size=32M",
        "--innodb-log-file-size=16M",
        "--innodb-flush-log-at-trx-commit=2",
        "--character-set-server=utf8mb4",
        "--collation-server=utf8mb4_general_ci",
    )

    def __init__(
        self,
        port: int,
        *,
        start_timeout: float = 60.0,
        stop_timeout: float = 60.0,
        options: tuple[str, ...] = (),
    ):
        self.server_binary, self.install_binary = find_mariadb()
        #: Server options of this one, after OPTIONS (``--log-bin``, ``--server-id=2``...).
        self.options = options
        super().__init__(port, start_timeout=start_timeout, stop_timeout=stop_timeout)

    def url(self, database: str | None = None) -> sa.URL:
        return sa.URL.create("mysql", username="root", host=HOST, port=self.port, database=database)

    def _initialise(self, data: Path) -> None:
        self._run(
            [
                str(self.install_binary),
                "--no-defaults",  # not /etc/mysql: the shared server's settings
                f"--datadir={data}",
                "--auth-root-authentication-method=normal",  # root by password (empty), not socket
                "--skip-test-db",
                *self.OPTIONS,
            ],
            f"{self.name} mariadb-install-db",
            data.parent,
        )

    def _command(self, data: Path) -> list[str]:
        assert self.directory is not None
        return [
            str(self.server_binary),
            "--no-defaults",
            f"--datadir={data}",
            f"--port={self.port}",
            f"--bind-address={HOST}",
            f"--socket={self.directory / 'mariadb.sock'}",
            f"--pid-file={self.directory / 'mariadb.pid'}",
            *self.OPTIONS,
            *self.options,
        ]

    def _accepts_connections(self) -> bool:
        import pymysql  # type: ignore[import-untyped]  # with aiomysql; blocking, off the loop

        try:
            connection = pymysql.connect(
                host=HOST, port=self.port, user="root", password="", connect_timeout=2
            )
        except pymysql.err.MySQLError:
            return False
        connection.close()
        return True


class PgBouncerServer(PrivateServer):
    """PgBouncer in transaction pooling mode on ``port``, in front of the PostgreSQL server on
    ``target`` (every database, user ``postgres`` with trust authentication). Its pool has
    ``pool_size`` server connections per database, so that client connections share them."""

    name = "PgBouncer"
    backend = "postgresql"
    package = "pgbouncer"
    os_user = "postgres"  # it refuses to run as root
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        port: int,
        *,
        target: sa.URL,
        pool_size: int = 2,
        start_timeout: float = 30.0,
        stop_timeout: float = 30.0,
    ):
        found = shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
        if found is None:
            raise ServerNotInstalledError(
                "No 'pgbouncer' on '/usr/sbin:/usr/bin'. Install it: apt-get install pgbouncer"
            )
        self.binary = Path(found)
        self.target = target
        self.pool_size = pool_size
        super().__init__(port, start_timeout=start_timeout, stop_timeout=stop_timeout)

    def url(self, database: str | None = "postgres") -> sa.URL:
        return sa.URL.create(
            "postgresql", username="postgres", host=HOST, port=self.port, database=database
        )

    def _initialise(self, data: Path) -> None:
        data.mkdir()
        (data / "userlist.txt").write_text('"postgres" ""\n')
        (data / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={self.target.host} port={self.target.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = {HOST}\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {data}\n"
            "auth_type = trust\n"
            f"auth_file = {data / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 200\n"
        )
        if self._user is not None:
            for path in (data, data / "userlist.txt", data / "pgbouncer.ini"):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _command(self, data: Path) -> list[str]:
        return [str(self.binary), str(data / "pgbouncer.ini")]

    def _accepts_connections(self) -> bool:
        return _port_in_use(self.port)
