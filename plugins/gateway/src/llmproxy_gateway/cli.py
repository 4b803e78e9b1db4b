"""``llmproxy serve`` and ``llmproxy keys create|list|revoke`` (through ``register_commands``)."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import Any

from llmproxy.errors import ConfigError
from llmproxy_gateway import env

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def configure_serve(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``llmproxy serve``."""
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port (8080; 0 picks a free one)"
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (warning)",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log every request (off: it costs latency)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes sharing the port (LLMPROXY_GATEWAY_WORKERS, else 1); more than"
        " one needs file or Redis stores, so that budgets, keys and the log are shared",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="also serve GET /metrics, and nothing else, on this port of --host (0 picks a free"
        " one; LLMPROXY_GATEWAY_METRICS_PORT, else none: only the gateway's port serves it)",
    )
    parser.add_argument(
        "--metrics-auth",
        choices=["admin", "none"],
        default=None,
        help="whether /metrics on the --metrics-port asks for the admin key"
        " (LLMPROXY_GATEWAY_METRICS_AUTH, else admin); none: keep that port to the scraper's"
        " network",
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:
    """Run the gateway until SIGINT or SIGTERM."""
    from llmproxy_gateway import metrics

    host: str = args.host
    workers = env.workers(os.environ, args.workers)
    metrics_port = env.metrics_port(os.environ, args.metrics_port)
    env.metrics_open(os.environ, args.metrics_auth, metrics_port)
    # The flags win over the variables, which the app reads (in each worker): pass them on.
    if args.metrics_port is not None:
        os.environ[env.METRICS_PORT] = str(args.metrics_port)
    if args.metrics_auth is not None:
        os.environ[env.METRICS_AUTH] = args.metrics_auth
    if workers > 1:
        # Before prometheus-client is imported (with the app): it reads the variable once.
        metrics_dir: Path | None = metrics.private_dir(os.environ)
    else:
        metrics_dir = None
        os.environ.pop(metrics.MULTIPROC_DIR, None)  # one process: its counts stay in memory
    try:
        return _serve(args, host, workers, metrics_port, metrics_dir)
    finally:
        if metrics_dir is not None:
            metrics.remove_private_dir(metrics_dir)


def _serve(
    args: argparse.Namespace,
    host: str,
    workers: int,
    metrics_port: int | None,
    metrics_dir: Path | None,
) -> int:
    import functools

    import uvicorn

    from llmproxy_gateway import metrics
    from llmproxy_gateway.app import check_config, create_app, preload
    from llmproxy_gateway.guard import ServerLimits, server_config
    from llmproxy_gateway.workers import Supervisor, listeners, serve_worker

    env.admin_key(os.environ)  # checked here too: several workers would each fail on it
    ServerLimits.from_env(os.environ)  # and the connection limits
    if workers > 1:
        env.check_shared_stores(os.environ)
        check_config(os.environ)  # (one worker builds its app below, before the announce)
    if not _loopback(host):
        sys.stderr.write(
            f"llmproxy serve: listening on {host}, beyond this machine; keys travel in clear"
            " text unless a TLS proxy is in front\n"
        )
    # Listen at once: connections wait in the backlog while the app starts (the tokenizer loads).
    try:
        sockets = listeners(host, args.port, workers)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host} port {args.port}: {exc.strerror or exc}", path="port"
        ) from None
    port = sockets[0].getsockname()[1]
    extra: list[socket.socket] = []
    if metrics_port is not None:
        if metrics_port == port:
            raise ConfigError(
                f"the metrics port (--metrics-port or {env.METRICS_PORT}) is the gateway's own"
                f" port ({port}): choose another one",
                path=env.METRICS_PORT,
            )
        try:
            extra = listeners(host, metrics_port, 1)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host} port {metrics_port} for metrics: {exc.strerror or exc}",
                path=env.METRICS_PORT,
            ) from None
        metrics_port = extra[0].getsockname()[1]
        os.environ[env.METRICS_PORT] = str(metrics_port)  # the port 0 picked, for the workers
    options: dict[str, Any] = {
        "log_level": args.log_level,
        "access_log": args.access_log,
        # X-Forwarded-For only changes the client address the access log shows; nothing else
        # in the gateway reads it, so without the log the middleware is skipped.
        "proxy_headers": args.access_log,
        "lifespan": "on",
        "server_header": False,
        "date_header": False,
    }
    shown = f"[{host}]" if ":" in host else host

    scrape = f"http://{shown}:{metrics_port or port}/metrics"

    def announce(usage: str) -> None:
        sys.stdout.write(
            f"llmproxy gateway on http://{shown}:{port}/v1 (dashboard:"
            f" http://{shown}:{port}/dashboard; metrics: {scrape}; usage log: {usage};"
            f" workers: {workers})\n"
        )
        sys.stdout.flush()

    if workers == 1:
        app = create_app(freeze_gc=True)
        config = server_config(app, options, os.environ)
        announce(app.gateway.usage.describe())  # type: ignore[attr-defined]
        uvicorn.Server(config).run(sockets=[*sockets, *extra])
        return 0
    from llmproxy_usage_log import open_usage_log

    log = open_usage_log(None, os.environ)  # on: check_shared_stores refuses it turned off
    announce(log.describe())
    log.close()

    # Each worker builds its own app (forked, on Linux, once this process has loaded the
    # tokenizer tables they share); they share budgets, keys, the usage log and dashboard
    # sessions through their files (or Redis).
    def dead(pid: int) -> None:
        if metrics_dir is not None:
            metrics.mark_dead(pid, metrics_dir)

    try:
        return Supervisor(
            sockets,
            workers,
            options,
            target=functools.partial(serve_worker, extra=tuple(extra)),
            preload=lambda: preload(os.environ),
            on_exit=dead,
        ).run()
    finally:
        for sock in extra:
            sock.close()


def configure_keys(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``llmproxy keys``."""
    sub = parser.add_subparsers(dest="keys_action", required=True)
    create = sub.add_parser("create", help="create a key; prints it once, as the last word")
    create.add_argument("--user", help="who calls with this key (their user scope and history)")
    create.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="SPEC",
        help="tokens:100000/month, usd:5/day, requests:60/minute (repeatable)",
    )
    create.add_argument(
        "--models",
        metavar="LIST",
        help="the only models the key may use, comma-separated names, aliases or patterns with *"
        ' ("openai/*,fast"); default: any model',
    )
    create.add_argument(
        "--cache",
        nargs="?",
        const="on",
        default="off",
        metavar="TTL",
        help="serve the key's repeated requests from the response cache (needs"
        " LLMPROXY_CACHE_URL); TTL in seconds, default the configured cache.ttl",
    )
    create.add_argument("--admin", action="store_true", help="the key also opens the dashboard")
    create.add_argument("--name", help="a label shown in keys list")
    sub.add_parser("list", help="list keys (ids, users, budgets, models, cache; never the keys)")
    revoke = sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def keys(args: argparse.Namespace) -> int:
    """Run ``llmproxy keys ...``."""
    from llmproxy_gateway.keys import KeyStore

    store = KeyStore.from_env(os.environ)
    out = sys.stdout
    try:
        if args.keys_action == "create":
            user = args.user or ("admin" if args.admin else None)
            if user is None:
                raise ConfigError("llmproxy keys create needs --user NAME (or --admin)")
            record, secret = store.create(
                user,
                budgets=args.budget,
                admin=args.admin,
                name=args.name,
                models=args.models if args.models is not None else (),
                cache=args.cache,
            )
            budgets = ", ".join(record.budgets) or "none"
            role = " (admin)" if record.admin else ""
            models = ", ".join(record.models) or "any"
            cache = _cache_text(record.cache)
            out.write(
                f"created key {record.id} for user {record.user}{role}, budgets: {budgets},"
                f" models: {models}, cache: {cache}\n"
                "store it now; it is not shown again:\n"
                f"{secret}\n"
            )
        elif args.keys_action == "list":
            rows = store.all()
            if not rows:
                out.write(f"no keys yet (llmproxy keys create --user NAME); store: {_where()}\n")
            for k in rows:
                state = f"revoked {_when(k.revoked_at)}" if k.revoked_at else "active"
                admin = " admin" if k.admin else ""
                name = f" {k.name!r}" if k.name else ""
                out.write(
                    f"{k.id}\t{k.user}\t{', '.join(k.budgets) or '-'}"
                    f"\t{', '.join(k.models) or 'any model'}\tcache {_cache_text(k.cache)}"
                    f"\t{state}{admin}\tcreated {_when(k.created_at)}{name}\n"
                )
        else:
            record = store.revoke(args.id)
            out.write(f"revoked key {record.id} of user {record.user}\n")
    finally:
        store.close()
    return 0


def _cache_text(cache: bool | float) -> str:
    """A key's cache setting as ``keys create`` and ``keys list`` show it: on, off, 600 s."""
    if cache is True:
        return "on"
    return "off" if cache is False else f"{cache:g} s"


def _where() -> str:
    return env.keys_url(os.environ)
