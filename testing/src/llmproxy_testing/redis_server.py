r"""Real ``redis-server`` processes on loopback for tests and benchmarks (standard library only).

:class:`RedisServer` starts ``redis-server`` on 127.0.0.1 and a free port, in a temporary
directory, without persistence, waits until it answers ``PING`` and stops it by its pid
(SIGTERM, then SIGKILL after a timeout). :class:`RedisClusterServers` starts several such
servers in cluster mode and joins them into one Redis Cluster. Both talk to the servers with a
tiny RESP client of their own (:meth:`RedisServer.command`), so they need no Redis library.

A session-scoped pytest fixture, with a clean database for every test::

    import os, pytest
    from llmproxy_testing.redis_server import RedisServer, redis_server_path

    @pytest.fixture(scope="session")
    def redis_server():
        if redis_server_path() is None:
            message = "redis-server is not installed (apt-get install redis-server)"
            if os.environ.get("CI"):
                pytest.fail(message)  # CI must never skip the Redis tests silently
            pytest.skip(message)
        with RedisServer() as server:
            yield server

    @pytest.fixture
    def redis_url(redis_server):
        redis_server.command("FLUSHALL")
        return redis_server.url
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "RedisClusterServers",
    "RedisServer",
    "RedisServerError",
    "free_port",
    "redis_server_path",
]


class RedisServerError(RuntimeError):
    """``redis-server`` could not be started, or answered a command with an error."""


def redis_server_path() -> str | None:
    """Return the ``redis-server`` executable on PATH (or in /usr/sbin, /usr/bin), or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _encode(args: Sequence[Any]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Reader:
    """Reads RESP2 replies from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            self._more()
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _more(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis-server closed the connection")
        self._buf += chunk

    def reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisServerError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            while len(self._buf) < size + 2:
                self._more()
            data, self._buf = self._buf[:size], self._buf[size + 2 :]
            return data.decode(errors="replace")
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.reply() for _ in range(count)]
        raise RedisServerError(f"unexpected reply from redis-server: {line!r}")


class RedisServer:
    """One ``redis-server`` on 127.0.0.1, without persistence, in its own temporary directory.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`). ``args`` are extra
    command-line options (``["--cluster-enabled", "yes"]``). ``DEBUG`` is enabled so tests can
    freeze the server (``DEBUG SLEEP``) to simulate timeouts.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        args: Sequence[str] = (),
        executable: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.host = "127.0.0.1"
        self._fixed_port = port
        self.port = port or 0
        self.args = list(args)
        self.executable = executable or redis_server_path()
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    # -- what tests read -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def directory(self) -> Path:
        """The server's working directory (its log is ``redis.log`` there)."""
        if self._dir is None:
            raise RedisServerError("the server was never started")
        return Path(self._dir.name)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING; retry on a port clash."""
        if self.executable is None:
            raise RedisServerError("redis-server is not installed (apt-get install redis-server)")
        if self.running:
            return self
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="llmproxy-redis-")
        attempts = 1 if self._fixed_port else 5
        last = ""
        for _ in range(attempts):
            if not self._fixed_port:
                self.port = free_port(self.host)
            if self._launch():
                return self
            last = self._log_tail()
        raise RedisServerError(f"redis-server did not start on {self.host}:{self.port}:\n{last}")

    def _launch(self) -> bool:
        log = self.directory / "redis.log"
        command = [
            str(self.executable),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(log),
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--enable-debug-command",
            "yes",
            *self.args,
        ]
        self._process = subprocess.Popen(  # noqa: S603 - the executable and args are ours
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                return False
            try:
                if self.command("PING") == "PONG":
                    return True
            except (OSError, RedisServerError):
                pass
            time.sleep(0.02)
        self.stop()
        return False

    def _log_tail(self) -> str:
        try:
            return "\n".join((self.directory / "redis.log").read_text().splitlines()[-10:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server by its pid: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout)

    def restart(self) -> None:
        """Stop the server and start a new one on the same port (its data is gone)."""
        self.stop()
        self._fixed_port = self.port
        try:
            self.start()
        finally:
            self._fixed_port = None

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Freeze the server for the ``with`` block: its connections stay open, nothing answers.

        The process is stopped (SIGSTOP) and resumed (SIGCONT) when the block ends, so a test
        decides how long a server hangs, not a timer (``DEBUG SLEEP`` in another thread races
        with the commands the test sends next). Commands sent meanwhile wait in the socket
        buffers and run once the server goes on, as on a server stuck on a slow command.
        POSIX only.
        """
        pid = self.pid
        if pid is None:
            raise RuntimeError(f"{self!r} is not running; start it before freezing it")
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- talking to it ---------------------------------------------------------------------------

    def command(self, *args: Any, timeout: float = 10.0) -> Any:
        """Send one command on a new connection and return the decoded RESP2 reply."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(_encode(args))
            return _Reader(sock).reply()

    def info(self, section: str = "stats") -> dict[str, str]:
        """Return ``INFO section`` as a dict of strings."""
        text = self.command("INFO", section)
        out: dict[str, str] = {}
        for line in str(text).splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key] = value
        return out

    def __repr__(self) -> str:
        return f"<RedisServer {self.host}:{self.port} pid={self.pid}>"


class RedisClusterServers:
    """A Redis Cluster of ``size`` primaries (no replicas) on loopback, for tests.

    ``url`` names one node; cluster clients discover the others. Slots are split evenly.
    """

    def __init__(self, size: int = 3, *, startup_timeout: float = 20.0) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.size = size
        self.startup_timeout = startup_timeout
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        """The URL of the first node."""
        return self.nodes[0].url

    def start(self) -> RedisClusterServers:
        """Start the nodes, give each a slot range, join them, wait for ``cluster_state:ok``."""
        try:
            for _ in range(self.size):
                node = RedisServer(
                    args=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ]
                )
                self.nodes.append(node.start())
            per = 16384 // self.size
            for index, node in enumerate(self.nodes):
                first = index * per
                last = 16383 if index == self.size - 1 else first + per - 1
                node.command("CLUSTER", "ADDSLOTSRANGE", first, last)
            for node in self.nodes[1:]:
                node.command("CLUSTER", "MEET", node.host, self.nodes[0].port)
            self._wait_ok()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            states = [n.command("CLUSTER", "INFO") for n in self.nodes]
            known = [n.command("CLUSTER", "NODES").count("\n") for n in self.nodes]
            if all("cluster_state:ok" in s for s in states) and all(
                count >= self.size for count in known
            ):
                return
            time.sleep(0.05)
        raise RedisServerError("the Redis Cluster did not reach cluster_state:ok")

    def close(self) -> None:
        """Stop every node by its pid and remove their directories."""
        for node in self.nodes:
            node.close()
        self.nodes = []

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
