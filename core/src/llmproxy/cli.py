"""The ``llmproxy`` command: chat, plugins, providers, history and usage from the terminal.

Every error llmproxy raises on purpose is printed as one line on stderr (exit status 1; 2 for
configuration problems such as a missing API key), never as a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from llmproxy import media, price_report
from llmproxy.budget.base import Claim, ListableLedger
from llmproxy.budget.routed import shared_ledger
from llmproxy.config import PROVIDER_KINDS, load_config
from llmproxy.errors import ConfigError, InvalidRequest, LLMProxyError
from llmproxy.plugins import load_plugins
from llmproxy.proxy import Proxy
from llmproxy.structured import parse_schema_spec
from llmproxy.types import MAX_PART_BYTES, Audio, ChatResponse, Document, Image, Part, Usage


class _Parser(argparse.ArgumentParser):
    """argparse, naming the plugins that failed when a command is unknown (theirs may be)."""

    def error(self, message: str) -> NoReturn:
        """Exit with ``message``, plus the plugin errors when it is about an unknown command."""
        problems = load_plugins().errors
        if problems and "invalid choice" in message:
            message += "\nplugin problems:\n" + "\n".join(f"  {p}" for p in problems)
        super().error(message)


class _CacheAction(argparse.Action):
    """``--cache [TTL]``: on with the configured TTL, or with TTL seconds (a number above 0).

    A word after ``--cache`` is not a TTL but the prompt (``llmproxy chat --cache "Hi"``): it is
    kept in ``cache_prompt`` for :func:`_chat`.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        """Set ``cache`` to True or a TTL; keep a non-number after the flag as the prompt."""
        if not isinstance(values, str):  # the bare flag: its const, True
            setattr(namespace, self.dest, True)
            return
        text = values
        try:
            seconds = float(text)
        except ValueError:
            setattr(namespace, self.dest, True)
            namespace.cache_prompt = text
            return
        if not math.isfinite(seconds) or seconds <= 0:
            parser.error(f"--cache takes a time to live in seconds above 0 (600), got {text!r}")
        setattr(namespace, self.dest, seconds)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llmproxy", description="One proxy for LLM services.")
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="send a prompt and print the answer as it arrives")
    chat.add_argument("prompt", nargs="?", help="the prompt; read from stdin when omitted or '-'")
    chat.add_argument(
        "-m", "--model", help="provider/model or an alias (default: LLMPROXY_DEFAULT_MODEL)"
    )
    chat.add_argument("-s", "--system", help="a system prompt")
    chat.add_argument(
        "--session", help="continue (or start) a conversation kept in the history store"
    )
    chat.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    chat.add_argument(
        "--cache",
        nargs="?",
        const=True,
        default=None,
        action=_CacheAction,
        metavar="TTL",
        help="answer from the response cache when it holds this request's reply, else ask and"
        " keep the reply (TTL seconds, default cache.ttl); needs LLMPROXY_CACHE_URL",
    )
    chat.add_argument("--usage", action="store_true", help="print the tokens used (on stderr)")
    chat.add_argument("--max-output-tokens", type=int, help="cap the answer's length in tokens")
    chat.add_argument("--temperature", type=float)
    chat.add_argument(
        "--schema",
        help="answer with JSON fitting a schema and print it: a JSON-schema file, or a compact"
        " spec 'name str, age int, tags list[str]' (type defaults to str)",
    )
    chat.add_argument(
        "--schema-retries",
        type=int,
        default=0,
        help="send an answer that does not fit the schema back this many times (default 0)",
    )
    chat.add_argument(
        "-a",
        "--attach",
        action="append",
        default=[],
        metavar="PATH_OR_URL",
        help="attach a file (an image, a PDF or audio, told apart by its bytes) or an https://"
        " image URL; repeatable",
    )

    embed = sub.add_parser(
        "embed",
        help="print a text's embedding as JSON, or with --similar how alike several texts are",
    )
    embed.add_argument(
        "texts", nargs="*", help="the texts; one read from stdin when none is given or '-'"
    )
    embed.add_argument(
        "-m",
        "--model",
        default="openai/text-embedding-3-small",
        help="provider/model or an alias of an embeddings model"
        " (default: openai/text-embedding-3-small)",
    )
    embed.add_argument("--dimensions", type=int, help="ask for shorter vectors")
    embed.add_argument(
        "--similar",
        action="store_true",
        help="compare the texts (two or more): their pairs by cosine similarity, most alike first",
    )
    embed.add_argument("--usage", action="store_true", help="print the tokens used (on stderr)")

    sub.add_parser(
        "plugins", help="list discovered plugins, what they register, and configured providers"
    )
    sub.add_parser(
        "providers",
        help="list installed and configured providers: kind, base URL, and the variable their"
        " key comes from and whether it is set (never the key)",
    )
    for command in load_plugins().registry.commands.values():
        command.configure(sub.add_parser(command.name, help=command.help))

    history = sub.add_parser("history", help="list, show or delete stored conversations")
    hsub = history.add_subparsers(dest="action", required=True)
    hsub.add_parser("list", help="list sessions, most recent first")
    show = hsub.add_parser("show", help="print a session's messages")
    show.add_argument("session")
    show.add_argument("-n", "--last", type=int, help="only the last N messages")
    delete = hsub.add_parser("delete", help="delete a session")
    delete.add_argument("session")

    usage = sub.add_parser(
        "usage",
        help="show used / limit / remaining / resets-at of every budget: configured ones and"
        " every one the ledger holds (named in code, gateway keys'); filters keep those a call"
        " with these values counts against",
    )
    usage.add_argument("-m", "--model", help="provider/model the budgets are shown for")
    usage.add_argument("--user")
    usage.add_argument("--session")
    usage.add_argument("--key", help="a key id (for key-scoped budgets)")
    usage.add_argument("--tag", action="append", default=[], metavar="NAME=VALUE")
    price_report.configure(
        sub.add_parser(
            "prices",
            help="show the price a call to a model would be charged, where it came from and its"
            " date (stale ones flagged); without a model, the configured and plugins' prices",
        )
    )
    return parser


def _usage_line(usage: Usage) -> str:
    parts = [f"input {usage.input_tokens}", f"output {usage.output_tokens}"]
    if usage.cached_input_tokens:
        parts.append(f"cached input {usage.cached_input_tokens}")
    if usage.cache_write_tokens:
        parts.append(f"cache write {usage.cache_write_tokens}")
    if usage.reasoning_tokens:
        parts.append(f"reasoning {usage.reasoning_tokens}")
    parts.append(f"total {usage.total_tokens}")
    if usage.cost is not None:
        parts.append(f"cost ${usage.cost:.6f}")
    return "tokens: " + ", ".join(parts) + (" (estimated)" if usage.estimated else "")


def _read_prompt(arg: str | None, stdin: TextIO) -> str:
    if arg is not None and arg != "-":
        return arg
    if stdin.isatty():
        raise ConfigError('no prompt: pass it as an argument (llmproxy chat "Hello") or on stdin')
    return stdin.read()


def _read_schema(value: str) -> dict[str, Any]:
    """``--schema``: a JSON-schema file (or inline JSON), else a compact spec."""
    path = Path(value)
    text = None
    if value.strip().startswith("{"):
        text = value
    elif path.suffix == ".json" or path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the schema file {value}: {exc}") from None
    if text is None:
        return parse_schema_spec(value)
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"the schema {value!r} is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"the schema {value!r} must be a JSON object")
    return schema


_ACCEPTED = (
    "an image (PNG, JPEG, GIF, WebP), a PDF or audio (WAV, MP3, FLAC, Ogg) file, or an https://"
    " image URL"
)


def attachment(arg: str) -> Part:
    """The part ``llmproxy chat -a ARG`` attaches; a bad one is an InvalidRequest naming it.

    An ``https://`` URL is an image the provider fetches (URLs are images); anything else is a
    file, read and told apart by its bytes (not its name): an image, a PDF or audio.
    """
    where = f"-a {arg}"
    if "://" in arg:
        if not arg.startswith("https://"):
            raise InvalidRequest(f"{where}: a URL must be https:// (an image URL)", field="-a")
        return Image(url=arg)
    path = Path(arg)
    try:
        size = path.stat().st_size
        if size > MAX_PART_BYTES:
            raise InvalidRequest(
                f"{where}: the file is {size:,} bytes, more than a part may carry"
                f" ({MAX_PART_BYTES:,})",
                field="-a",
            )
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(
            f"{where}: cannot read the file: {exc.strerror or exc}", field="-a"
        ) from None
    kind = media.sniff(data[:64])
    try:
        if kind in media.IMAGE_TYPES:
            return Image(data=data)
        if kind == "application/pdf":
            return Document(data=data, filename=path.name)
        if kind is not None and media.audio_format(kind) is not None:
            return Audio(data)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}: {exc}", field="-a") from None
    found = "the file is empty" if not data else "its bytes are no image, PDF or audio"
    raise InvalidRequest(f"{where}: {found}; attach {_ACCEPTED}", field="-a")


def chat_prompt(text: str, attachments: Sequence[Part]) -> str | list[str | Part]:
    """What ``llmproxy chat`` sends: the text, followed by its attachments when there are any."""
    return [text, *attachments] if attachments else text


def _chat(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    attachments = [attachment(a) for a in args.attach]
    text = getattr(args, "cache_prompt", None)  # llmproxy chat --cache "the prompt"
    if text is not None and args.prompt is not None:
        raise ConfigError(
            f"--cache takes a time to live in seconds above 0 (600), got {text!r};"
            " give the prompt once"
        )
    proxy = Proxy.from_env()
    prompt = chat_prompt(_read_prompt(text or args.prompt, sys.stdin), attachments)
    kwargs = {
        "model": args.model,
        "system": args.system,
        "session_id": args.session,
        "max_output_tokens": args.max_output_tokens,
        "temperature": args.temperature,
    }
    if args.cache is not None:
        kwargs["cache"] = args.cache
    if args.schema is not None:
        kwargs["schema"] = _read_schema(args.schema)
        kwargs["schema_retries"] = args.schema_retries
    try:
        response: ChatResponse | None
        if args.schema is not None:  # the JSON is printed whole, once it is known to fit
            response = proxy.chat(prompt, **kwargs)
            out.write(json.dumps(response.parsed, indent=2, ensure_ascii=False) + "\n")
        elif args.no_stream:
            response = proxy.chat(prompt, **kwargs)
            out.write(response.text + "\n")
        else:
            with proxy.stream(prompt, **kwargs) as stream:
                for event in stream:
                    if event.text:
                        out.write(event.text)
                        out.flush()
                response = stream.response
            out.write("\n")
        if response is not None and response.cut_short_by_budget:
            err.write(
                f"note: the answer was cut short at {response.max_output_tokens} output tokens,"
                " all the budget had room for (see llmproxy usage)\n"
            )
        if args.usage:
            line = _usage_line(response.usage if response else Usage())
            if response is not None and response.cache_hit:
                line += " (from the response cache)"
            err.write(line + "\n")
    finally:
        proxy.close()
    return 0


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """The cosine similarity of two vectors (0.0 when either is all zeros)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def _embed(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    texts: list[str] = list(args.texts)
    if not texts or texts == ["-"]:
        texts = [_read_prompt(None, sys.stdin).removesuffix("\n")]
    if args.similar and len(texts) < 2:
        err.write("llmproxy: --similar compares texts: give two or more\n")
        return 2
    proxy = Proxy.from_env()
    try:
        result = proxy.embed(texts, model=args.model, dimensions=args.dimensions)
    finally:
        proxy.close()
    if args.similar:
        pairs = [
            (cosine(result.vectors[i], result.vectors[j]), i, j)
            for i in range(len(texts))
            for j in range(i + 1, len(texts))
        ]
        pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
        for score, i, j in pairs:
            out.write(f"{score:.4f}  {json.dumps(texts[i])}  {json.dumps(texts[j])}\n")
    elif len(texts) == 1:
        out.write(json.dumps(list(result.vectors[0])) + "\n")
    else:
        for vector in result.vectors:  # one JSON array a line, in the texts' order
            out.write(json.dumps(list(vector)) + "\n")
    if args.usage:
        err.write(_usage_line(result.usage) + "\n")
    return 0


def _plugins(out: TextIO) -> int:
    plugins = load_plugins()
    for info in plugins.infos():
        dist = (
            f"{info.distribution} {info.version or ''}".strip()
            if info.distribution
            else "(not installed)"
        )
        out.write(f"{info.name}  [{dist}]\n")
        for thing in info.registers:
            out.write(f"    {thing}\n")
        if info.error:
            out.write(f"    ERROR: {info.error}\n")
    _configured_providers(out, set(plugins.registry.providers))
    return 0


def _configured_providers(out: TextIO, installed: set[str]) -> None:
    """List the ``[providers.NAME]`` tables with a ``kind`` (served by no plugin of their name).

    Reads the configuration (``LLMPROXY_CONFIG`` and ``LLMPROXY_PROVIDERS__*``) but makes no
    provider, so no SDK is imported.
    """
    config = load_config(environ=os.environ)
    declared = {n: t for n, t in sorted(config.providers.items()) if t.get("kind")}
    if not declared:
        return
    out.write("configured providers:\n")
    for name, table in declared.items():
        kind = str(table["kind"])
        key = table.get("api_key_env")
        auth = f"key from {key}" if key else "key set" if table.get("api_key") else "no key"
        missing = "" if kind in installed else f"  (needs a plugin providing '{kind}')"
        out.write(f"    {name}  [{kind}] {table.get('base_url')}  ({auth}){missing}\n")


def provider_rows(environ: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """``(name, kind, base URL, key)`` of every installed and configured provider, by name.

    Installed providers are those plugins register (``plugin NAME``); a ``[providers.NAME]``
    table with a ``kind`` adds a configured one. The base URL is the table's, else the first
    set ``*_URL`` variable the plugin reads, else ``(default)``. The key column names where the
    key comes from (a variable, marked ``set`` or ``not set``, or the configuration) and never
    shows the key. Reads the configuration but makes no provider, so no SDK is imported.
    """
    registry = load_plugins(environ).registry
    tables = load_config(environ=environ).providers
    rows: list[tuple[str, str, str, str]] = []

    def source(name: str) -> str:
        return f"{name} ({'set' if environ.get(name) else 'not set'})"

    for name, entry in registry.providers.items():
        if name in PROVIDER_KINDS:
            continue  # a kind that serves configured tables, not a provider of its own
        table = tables.get(name) or {}
        if table.get("kind"):
            continue  # a configured table of that name replaces it
        urls = [n for n in entry.env if n.endswith("_URL")]
        keys = [n for n in entry.env if not n.endswith("_URL")]
        url = table.get("base_url") or next((environ[n] for n in urls if environ.get(n)), None)
        if table.get("api_key"):
            key = "in configuration"
        else:
            key = " or ".join(source(n) for n in keys) or "none"
        rows.append((name, f"plugin {entry.plugin}", str(url or "(default)"), key))
    for name, table in tables.items():
        kind = table.get("kind")
        if not kind:
            if name not in registry.providers:
                rows.append((name, "configured, no plugin installed", "-", "-"))
            continue
        variable = table.get("api_key_env")
        if table.get("api_key"):
            key = "in configuration"
        elif variable:
            key = source(str(variable))
        else:
            key = "none"
        header = table.get("api_key_header")
        if header and key != "none":
            key += f" in header {header}"
        if kind not in registry.providers:
            kind = f"{kind} (needs a plugin providing it)"
        rows.append((name, str(kind), str(table.get("base_url")), key))
    return sorted(rows)


def _providers(out: TextIO, environ: Mapping[str, str]) -> int:
    rows = [("NAME", "KIND", "BASE URL", "KEY"), *provider_rows(environ)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, row[3]]).rstrip() + "\n")
    return 0


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _history(args: argparse.Namespace, out: TextIO) -> int:
    proxy = Proxy.from_env()
    try:
        store = proxy.history
        if args.action == "list":
            sessions = store.sessions()
            if not sessions:
                out.write("no stored sessions\n")
            for s in sessions:
                out.write(
                    f"{s.session_id}\t{s.message_count} messages\tlast {_when(s.updated_at)}\n"
                )
        elif args.action == "show":
            records = store.load(args.session, args.last)
            if not records:
                raise ConfigError(f"no session named {args.session!r} in the history store")
            for r in records:
                mark = " (interrupted)" if r.message.interrupted else ""
                model = f" {r.provider}/{r.model}" if r.model else ""
                out.write(f"[{_when(r.created_at)}] {r.role}{model}{mark}:\n{r.content}\n\n")
        else:
            count = store.delete(args.session)
            out.write(f"deleted {count} messages of session {args.session!r}\n")
    finally:
        proxy.close()
    return 0


_NO_BUDGETS = (
    "no budgets configured or in the ledger (set LLMPROXY_MAX_TOKENS, budgets in"
    " LLMPROXY_CONFIG, or give a budget in code a name= so that it is kept in the ledger)\n"
)


def _matches(claim: Claim, wanted: dict[str, str]) -> bool:
    """Whether a call with the ``wanted`` scope values counts against ``claim``.

    Every part of the claim's scope must be ``global`` or equal the value given for its
    scope (``user:alice`` for ``--user alice``); with no filters every claim matches.
    """
    if not wanted:
        return True
    for part in claim.scope.split(","):
        if part == "global":
            continue
        if part.startswith("tag:"):
            tag, _, value = part[4:].partition(":")
            name = f"tag:{tag}"
        else:
            name, _, value = part.partition(":")
        if name not in wanted or wanted[name] != value:
            return False
    return True


def _usage(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    tags: dict[str, str] = {}
    for tag in args.tag:
        name, sep, value = tag.partition("=")
        if not sep:
            raise ConfigError(f"--tag takes NAME=VALUE, got {tag!r}")
        tags[name] = value
    wanted = {f"tag:{name}": value for name, value in tags.items()}
    for scope, value in (("user", args.user), ("session", args.session), ("key", args.key)):
        if value is not None:
            wanted[scope] = value
    proxy = Proxy.from_env()
    try:
        if args.model is not None:
            model = proxy.config.aliases.get(args.model, args.model)
            wanted["model"] = model
            wanted["provider"] = model.partition("/")[0]
        # The configured budgets, shown even before anything counted against them.
        rows = proxy.usage(
            model=args.model, user=args.user, session_id=args.session, key=args.key, tags=tags
        )
        # Every budget the ledger holds: named in code, a gateway key's, configured earlier.
        ledger = shared_ledger(proxy.ledger)
        if isinstance(ledger, ListableLedger):
            shown = {row.claim.key for row in rows}
            rows += [
                row
                for row in ledger.budgets()
                if row.claim.key not in shown and _matches(row.claim, wanted)
            ]
        else:
            err.write(
                f"llmproxy: the ledger ({type(ledger).__name__}) cannot list its budgets;"
                " showing the configured ones only\n"
            )
        if not rows:
            out.write(_NO_BUDGETS if not wanted else "no budgets match\n")
        for row in rows:
            c = row.claim
            resets = f", resets {_when(row.resets_at)}" if row.resets_at else ""
            out.write(
                f"{c.policy} ({c.scope}): used {row.used:g} / limit {c.limit:g} {c.unit},"
                f" reserved {row.reserved:g}, remaining {row.remaining:g}{resets}\n"
            )
    finally:
        proxy.close()
    return 0


def _prices(args: argparse.Namespace, out: TextIO) -> int:
    proxy = Proxy.from_env()
    try:
        config = proxy.config
        return price_report.report(
            proxy.prices,
            out,
            model=args.model,
            default_model=config.default_model,
            aliases=dict(config.aliases),
            max_age_days=config.price_max_age_days,
            as_json=args.json,
            routes={a: [d.model for d in r.deployments] for a, r in proxy.routers.items()},
        )
    finally:
        proxy.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``llmproxy`` command; return its exit status."""
    args = _parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    try:
        if args.command == "chat":
            return _chat(args, out, err)
        if args.command == "embed":
            return _embed(args, out, err)
        if args.command == "plugins":
            return _plugins(out)
        if args.command == "providers":
            return _providers(out, os.environ)
        if args.command == "history":
            return _history(args, out)
        if args.command == "usage":
            return _usage(args, out, err)
        if args.command == "prices":
            return _prices(args, out)
        return load_plugins().registry.commands[args.command].run(args)
    except ConfigError as exc:
        err.write(f"llmproxy: {exc}\n")
        return 2
    except LLMProxyError as exc:
        err.write(f"llmproxy: {exc}\n")
        return 1
    except KeyboardInterrupt:
        err.write("\n")
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
