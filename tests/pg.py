"""A throwaway PostgreSQL server for the tests, from Debian's ``postgresql`` package.

``initdb`` and ``pg_ctl`` refuse to run as root, and CI runs as root: then the server runs
as an unprivileged user (``nobody``, which every Debian system has; if it is missing,
a system user ``kernelpit-pg`` is made with ``useradd``), through ``runuser``, in a fresh
0700 directory owned by that user under /tmp (not under pytest's tmp dir, which is
private to root).  It listens on 127.0.0.1 on a free port with trust authentication
(nobody else can reach loopback from outside the machine) and on a Unix socket in
its directory.  One server is shared by every test of the session and stopped
(``pg_ctl stop -m immediate``) and removed at exit.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

_server: "PostgresServer | None" = None
_failure: str | None = None


def binaries() -> str | None:
    """The newest /usr/lib/postgresql/NN/bin that has initdb, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unprivileged_user() -> str:
    for name in ("nobody", "kernelpit-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "kernelpit-pg"], check=True, capture_output=True)
    return "kernelpit-pg"


class PostgresServer:
    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="kernelpit-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self.user = _unprivileged_user() if os.geteuid() == 0 else None
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        os.chmod(self.root, 0o700)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)

    def start(self) -> None:
        bin_ = self.bindir
        done = self._run(f"{bin_}/initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
                         "--no-sync", "-E", "UTF8")
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr or done.stdout}")
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                   f"-c unix_socket_directories={self.root} -c fsync=off "
                   "-c max_connections=100 -c shared_buffers=32MB")
        done = self._run(f"{bin_}/pg_ctl", "-D", self.data, "-l", os.path.join(self.root, "log"),
                         "-o", options, "-w", "-t", "60", "start")
        if done.returncode:
            log = ""
            try:
                with open(os.path.join(self.root, "log")) as f:
                    log = f.read()[-2000:]
            except OSError:
                pass
            raise RuntimeError(f"pg_ctl start failed: {done.stderr or done.stdout}\n{log}")

    def stop(self) -> None:
        self._run(f"{self.bindir}/pg_ctl", "-D", self.data, "stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def database(self, name: str) -> str:
        """A fresh, empty database on this server; returns its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name


def server() -> PostgresServer:
    """The session's server, started on first use; raises ``LookupError`` (why) when
    PostgreSQL is not installed, so a test can skip saying so."""
    global _server, _failure
    if _server is not None:
        return _server
    if _failure is not None:
        raise LookupError(_failure)
    bindir = binaries()
    if bindir is None:
        _failure = ("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); "
                    "apt-get install postgresql (.ci/run does)")
        raise LookupError(_failure)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _failure = "psycopg is not installed: pip install 'kernelpit[postgres]'"
        raise LookupError(_failure)
    srv = PostgresServer(bindir)
    srv.start()
    atexit.register(srv.stop)
    _server = srv
    return srv
