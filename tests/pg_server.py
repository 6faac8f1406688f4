"""A throwaway PostgreSQL server for the tests: Debian's ``postgresql`` binaries (``.ci/run`` installs
the package when they are missing), a fresh cluster in a temporary folder, trust authentication on
127.0.0.1 and a free port, fsync off. As root the server runs as the ``postgres`` user (PostgreSQL
refuses root)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    roots = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) if Path("/usr/lib/postgresql").is_dir() else []
    return roots[-1].parent if roots else None


@contextlib.contextmanager
def postgres_server():
    """Yields ``postgresql://r2f@127.0.0.1:<port>/r2f``; the cluster is removed afterwards."""
    from reliability_lib import free_port

    bins = bindir()
    if bins is None:
        raise RuntimeError("PostgreSQL server binaries not found: install Debian's postgresql (.ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="r2f-pg-"))
    os.chmod(root, 0o755)
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data, log = root / "data", root / "server.log"

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, text=True, cwd=root)

    try:
        run(str(bins / "initdb"), "-D", str(data), "-A", "trust", "-U", "r2f", "--no-sync", "-E", "UTF8")
        run(str(bins / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60", "start")
        run(str(bins / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "r2f", "r2f")
        yield f"postgresql://r2f@127.0.0.1:{port}/r2f"
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, FileNotFoundError):
            run(str(bins / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
