"""The worker processes of ``llmproxy serve --workers N``: their sockets and their supervisor.

Each worker builds its own app and serves on a listening socket the supervisor bound before
starting it, so connections made while the workers load wait in a backlog rather than being
refused. On Linux the supervisor first loads the default model's tokenizer (:func:`preload
<llmproxy_gateway.app.preload>`), then forks the workers, which share those tables copy-on-write
(about 130 MiB each would otherwise load); elsewhere each worker is a fresh interpreter
(multiprocessing's *spawn*).

On Linux every worker has a socket of its own on the one port (``SO_REUSEPORT``), and the
kernel spreads new connections evenly over them. On one shared socket, whichever worker's loop
is awake takes the next connection; under load that is the busiest worker, so it ends up with
most of the keep-alive connections (72 % of them on one of two workers, seen in
``bench/bench_gateway.py``), and its queue sets the latency. Elsewhere (``SO_REUSEPORT`` does
not spread connections on macOS or Windows) the workers share one socket.

The supervisor restarts a worker that dies after it started serving, stops the gateway (exit
status 1) when one dies before, forwards SIGINT/SIGTERM to the workers as SIGTERM (they finish
the requests in flight, then exit) and kills them at a second signal.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.context import ForkContext, ForkProcess, SpawnContext, SpawnProcess
from multiprocessing.synchronize import Event
from types import FrameType
from typing import Any

from llmproxy.errors import ConfigError, LLMProxyError

SPREAD_BY_KERNEL = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
"""Whether each worker gets its own listening socket, the kernel choosing among them."""

FORK = sys.platform.startswith("linux")
"""Whether workers are forked from a supervisor that preloaded their tables (else spawned;
also when another thread runs in the supervisor at that point)."""

BACKLOG = 2048
"""Connections a listening socket holds until a worker accepts them."""

Context = ForkContext | SpawnContext
Process = ForkProcess | SpawnProcess
Target = Callable[[Mapping[str, Any], socket.socket, Event], None]
"""What a worker process runs: ``(uvicorn options, its listening socket, its ready event)``."""


def listeners(host: str, port: int, workers: int) -> list[socket.socket]:
    """Listening sockets on ``(host, port)`` for ``workers`` workers (port 0: a free port).

    One socket per worker when :data:`SPREAD_BY_KERNEL` and there are several workers, else one
    socket (shared). A port that another program (or another gateway) listens on is refused
    with ``OSError`` (EADDRINUSE), as a plain bind is, although ``SO_REUSEPORT`` alone would let
    the two share it.
    """
    if workers < 1:
        raise ConfigError(f"the gateway needs at least 1 worker, got {workers}", path="workers")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    spread = SPREAD_BY_KERNEL and workers > 1
    if spread:
        # A socket without SO_REUSEPORT cannot bind a port anything listens on: claim the port
        # this way first, so that a second gateway on the same port fails instead of quietly
        # taking a share of its connections.
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            port = probe.getsockname()[1]
    sockets: list[socket.socket] = []
    try:
        for _ in range(workers if spread else 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if spread:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(BACKLOG)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def serve_worker(
    options: Mapping[str, Any],
    sock: socket.socket,
    ready: Event,
    extra: Sequence[socket.socket] = (),
) -> None:
    """One worker process: build the gateway's app and serve it on ``sock`` until stopped.

    ``ready`` is set once the app has started (its lifespan ran), which tells the supervisor
    that a later exit is a crash to recover from, not a gateway that cannot start. ``extra``
    are listening sockets every worker serves besides its own (the metrics port's, shared:
    :func:`functools.partial` binds them).
    """
    import uvicorn

    from llmproxy_gateway.app import create_app
    from llmproxy_gateway.guard import server_config

    try:
        app = create_app(freeze_gc=True, on_ready=ready.set)
        config = server_config(app, options, os.environ)
    except LLMProxyError as exc:  # a configuration the worker cannot start with: no traceback
        _say(str(exc))
        sys.exit(2)
    uvicorn.Server(config).run(sockets=[sock, *extra])


def _worker_main(
    target: Target,
    options: Mapping[str, Any],
    sock: socket.socket,
    ready: Event,
    inherited: Sequence[int],
    supervisor: int,
) -> None:
    # A forked worker inherits the supervisor's handlers; until uvicorn installs its own, a
    # signal should stop it, not bump the supervisor's counter in this process's copy.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _MASKABLE:  # held since before the fork (see _Worker.start): a pending one stops it now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _stop_with_supervisor(supervisor)
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    target(options, sock, ready)


_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_MASKABLE = hasattr(signal, "pthread_sigmask")


def _stop_with_supervisor(supervisor: int) -> None:
    """Have the kernel SIGTERM this worker when the supervisor dies, even by SIGKILL (Linux).

    Otherwise workers outlive a killed supervisor, still serving on the port, and nothing
    replaces or stops them. Elsewhere this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: keep the old behaviour
        return
    if os.getppid() != supervisor:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _say(message: str) -> None:
    sys.stderr.write(f"llmproxy serve: {message}\n")
    sys.stderr.flush()


@dataclass
class _Worker:
    """One worker slot: its socket, and the process (and ready event) now filling it."""

    number: int
    sock: socket.socket
    process: Process | None = None
    ready: Event | None = None

    def start(
        self,
        context: Context,
        target: Target,
        options: Mapping[str, Any],
        others: Sequence[socket.socket],
        forked: bool,
    ) -> None:
        if self.process is not None:  # the one it replaces has exited: free its handles
            self.process.join()
            self.process.close()
        self.ready = context.Event()
        # A forked worker inherits every socket; it closes the other workers' (a spawned one
        # receives only its own).
        inherited = [s.fileno() for s in others if s is not self.sock] if forked else []
        self.process = context.Process(
            target=_worker_main,
            args=(target, dict(options), self.sock, self.ready, inherited, os.getpid()),
            name=f"llmproxy-gateway-worker-{self.number}",
        )
        # A stop signal arriving between the fork and the worker's first lines would run the
        # supervisor's handler in the worker, which would then serve on, deaf to it: hold
        # such signals until the worker has its own (default) handlers.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS) if _MASKABLE else None
        try:
            self.process.start()
        finally:
            if held is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.exitcode is None


class Supervisor:
    """Runs ``workers`` processes of ``target`` on ``sockets`` (one each, or one shared).

    :meth:`run` blocks until SIGINT or SIGTERM (then stops the workers) or until a worker dies
    before it was ready (then stops the others and returns 1). ``on_exit`` is called with the
    pid of each worker that exited (the gateway marks its metrics dead).
    """

    def __init__(
        self,
        sockets: Sequence[socket.socket],
        workers: int,
        options: Mapping[str, Any],
        *,
        target: Target = serve_worker,
        preload: Callable[[], None] | None = None,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        if not sockets:
            raise ValueError("the supervisor needs at least one listening socket")
        self.sockets = list(sockets)
        self.preload = preload
        self.on_exit = on_exit
        self.workers = [
            _Worker(number, sockets[(number - 1) % len(sockets)])
            for number in range(1, workers + 1)
        ]
        self.options = dict(options)
        self.target = target
        self.context: Context = multiprocessing.get_context("spawn")
        self.signals = 0

    def run(self) -> int:
        """Start the workers and keep them running; the exit status for ``llmproxy serve``."""
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            if FORK:
                if self.preload is not None:
                    self.preload()
                # Forking a process with other threads running can leave a child blocked on a
                # lock one of them held; none run here unless a plugin started one.
                if threading.active_count() == 1:
                    self.context = multiprocessing.get_context("fork")
                    if self.preload is not None:
                        # Out of the collector's reach, the preloaded objects' pages stay
                        # shared: a collection in a worker would otherwise write to each.
                        gc.collect()
                        gc.freeze()
            for worker in self.workers:
                self._start(worker)
            return self._watch()
        finally:
            self._stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _start(self, worker: _Worker) -> None:
        forked = isinstance(self.context, ForkContext)
        worker.start(self.context, self.target, self.options, self.sockets, forked)

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.signals += 1

    def _watch(self) -> int:
        while not self.signals:
            sentinels = [w.process.sentinel for w in self.workers if w.process is not None]
            wait(sentinels, timeout=0.25)
            for worker in self.workers:
                if worker.alive or self.signals:
                    continue
                assert worker.process is not None
                assert worker.ready is not None
                code, pid = worker.process.exitcode, worker.process.pid
                self._exited(pid)
                if not worker.ready.is_set():
                    _say(
                        f"worker {worker.number} (pid {pid}) exited with status {code} before"
                        " it was ready (its error is above); stopping the gateway"
                    )
                    return 1
                _say(
                    f"worker {worker.number} (pid {pid}) exited with status {code}; starting"
                    " a new one"
                )
                self._start(worker)
        return 0

    def _stop(self) -> None:
        """SIGTERM every worker and wait for them; SIGKILL them at a further signal."""
        signals = self.signals
        for worker in self.workers:
            if worker.alive:
                assert worker.process is not None
                worker.process.terminate()
        killed = False
        while any(w.alive for w in self.workers):
            if self.signals > signals and not killed:
                killed = True
                for worker in self.workers:
                    if worker.alive:
                        assert worker.process is not None
                        worker.process.kill()
            sentinels = [w.process.sentinel for w in self.workers if w.process and w.alive]
            wait(sentinels, timeout=0.25)
        for worker in self.workers:
            if worker.process is not None:
                worker.process.join()
                self._exited(worker.process.pid)
                worker.process.close()
                worker.process = None

    def _exited(self, pid: int | None) -> None:
        if self.on_exit is not None and pid is not None:
            try:
                self.on_exit(pid)
            except Exception as exc:  # never let bookkeeping stop the supervisor
                _say(f"after worker pid {pid} exited: {exc}")
