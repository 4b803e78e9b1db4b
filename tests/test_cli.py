"""The llmproxy command, run as a real process against the fake upstream."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmproxy_testing._http import Reply
from llmproxy_testing.fake_openai import FakeOpenAI
from tests.conftest import API_KEY, chat_requests

LLMPROXY = str(Path(sys.executable).with_name("llmproxy"))


def run(
    args: list[str], env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "LLM_PROXY", "LLMPROXY"))
    }
    return subprocess.run(
        [LLMPROXY, *args],
        env={**base, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_chat_streams_the_answer(env: dict[str, str], upstream: FakeOpenAI) -> None:
    result = run(["chat", "Hello"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Echo: Hello\n"
    assert chat_requests(upstream)[0]["stream"] is True


def test_chat_no_stream_model_system_usage(env: dict[str, str], upstream: FakeOpenAI) -> None:
    result = run(
        [
            "chat",
            "Hi",
            "--no-stream",
            "-m",
            "openai/gpt-4.1-mini",
            "--system",
            "be nice",
            "--usage",
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Echo: Hi\n"
    assert "tokens: input 12, output 2, total 14" in result.stderr
    body = chat_requests(upstream)[0]
    assert body["model"] == "gpt-4.1-mini" and "stream" not in body
    assert body["messages"][0] == {"role": "system", "content": "be nice"}


def test_chat_usage_shows_cache_reads_and_writes(env: dict[str, str], upstream: FakeOpenAI) -> None:
    upstream.enqueue(
        Reply(
            text="ok",
            usage={
                "prompt_tokens": 1000,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 300, "cache_write_tokens": 600},
            },
        )
    )
    result = run(["chat", "Hi", "--no-stream", "--usage"], env)
    assert result.returncode == 0, result.stderr
    assert (
        "tokens: input 1000, output 2, cached input 300, cache write 600, total 1002"
        in result.stderr
    )


def test_session_continues_across_runs(env: dict[str, str], upstream: FakeOpenAI) -> None:
    assert run(["chat", "my name is Ada", "--session", "s1"], env).returncode == 0
    assert run(["chat", "what is my name?", "--session", "s1"], env).returncode == 0
    second = chat_requests(upstream)[1]["messages"]
    assert [m["content"] for m in second] == [
        "my name is Ada",
        "Echo: my name is Ada",
        "what is my name?",
    ]
    listed = run(["history", "list"], env)
    assert "s1\t4 messages" in listed.stdout
    shown = run(["history", "show", "s1"], env)
    assert "Echo: my name is Ada" in shown.stdout
    deleted = run(["history", "delete", "s1"], env)
    assert "deleted 4 messages" in deleted.stdout
    assert "no stored sessions" in run(["history", "list"], env).stdout


def test_prompt_from_stdin(env: dict[str, str]) -> None:
    result = run(["chat", "--no-stream"], env, stdin="from stdin")
    assert result.stdout == "Echo: from stdin\n"


@pytest.mark.parametrize("extra", [{}, {"OPENAI_API_KEY": ""}])
def test_missing_key_is_one_clear_line(env: dict[str, str], extra: dict[str, str]) -> None:
    env = {k: v for k, v in env.items() if k != "OPENAI_API_KEY"} | extra
    result = run(["chat", "Hello"], env)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "OPENAI_API_KEY" in lines[0] and "LLM_PROXY_OPEN_AI_DEFAULT_OPEN_API_KEY" in lines[0]
    assert "Traceback" not in result.stderr


def test_seed_key_variable_works(env: dict[str, str]) -> None:
    env = {k: v for k, v in env.items() if k != "OPENAI_API_KEY"}
    env["LLM_PROXY_OPEN_AI_DEFAULT_OPEN_API_KEY"] = API_KEY
    assert run(["chat", "Hello", "--no-stream"], env).stdout == "Echo: Hello\n"


def test_errors_are_one_line_and_never_show_the_key(
    env: dict[str, str], upstream: FakeOpenAI
) -> None:
    wrong = "sk-wrong-0123456789abcdefWXYZ"
    result = run(["chat", "Hello"], {**env, "OPENAI_API_KEY": wrong})
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr and "Traceback" not in result.stderr
    for text in (result.stdout, result.stderr):
        assert wrong not in text and wrong[:8] not in text and wrong[-4:] not in text


def test_budget_from_env_and_usage_command(env: dict[str, str], upstream: FakeOpenAI) -> None:
    env = {**env, "LLMPROXY_MAX_TOKENS": "1000"}
    assert run(["chat", "Hello", "--no-stream"], env).returncode == 0
    usage = run(["usage"], env)
    assert "tokens-global (global): used 9 / limit 1000 tokens" in usage.stdout
    # The configured budget is named after its kind and scope: a lower limit keeps the spend.
    tiny = run(["chat", "Hello there, this will not fit"], {**env, "LLMPROXY_MAX_TOKENS": "5"})
    assert tiny.returncode == 1 and "budget 'tokens-global'" in tiny.stderr


def test_usage_lists_budgets_named_in_code(env: dict[str, str], upstream: FakeOpenAI) -> None:
    from llmproxy import LLMBudget, Proxy

    team = LLMBudget(max_tokens=3000, name="team")
    ann = LLMBudget(max_tokens=500, scope="user", name="per-user")
    proxy = Proxy(environ=env, budgets=[team, ann])
    try:
        spent = proxy.chat("Hello", user="ann").usage.total_tokens
    finally:
        proxy.close()
    configured = {**env, "LLMPROXY_MAX_TOKENS": "1000"}
    listed = run(["usage"], configured)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == (
        "tokens-global (global): used 0 / limit 1000 tokens, reserved 0, remaining 1000"
    )  # configured, untouched
    assert f"team (global): used {spent} / limit 3000 tokens" in listed.stdout
    assert f"per-user (user:ann): used {spent} / limit 500 tokens" in listed.stdout
    bob = run(["usage", "--user", "bob"], env).stdout
    assert "team (global)" in bob and "per-user" not in bob
    assert "per-user (user:ann)" in run(["usage", "--user", "ann"], env).stdout
    assert run(["usage", "--key", "k9"], {**env, "LLMPROXY_LEDGER_URL": "memory://"}).stdout == (
        "no budgets match\n"
    )


def test_plugins_command_lists_distributions(env: dict[str, str]) -> None:
    result = run(["plugins"], env)
    assert "openai  [llmproxy-openai 0.1.0]" in result.stdout
    assert "provider openai" in result.stdout
    assert "history store sqlite://" in result.stdout


def test_interrupted_stream_in_cli_is_stored(env: dict[str, str], upstream: FakeOpenAI) -> None:
    upstream.enqueue(Reply(text="a b c d e f"))
    from llmproxy_testing._http import Fault

    upstream.enqueue(Fault.drop_after(2))
    run(["chat", "warm", "--no-stream"], env)
    result = run(["chat", "go", "--session", "s"], env)
    assert result.returncode == 1 and "stream broke" in result.stderr
    shown = run(["history", "show", "s"], env)
    assert "(interrupted)" in shown.stdout


def test_usage_by_scope(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "llmproxy.toml"
    config.write_text(
        '[[budgets]]\nkind = "tokens"\nmax_tokens = 500\nscope = "user"\nwindow = "month"\n'
    )
    env = {**env, "LLMPROXY_CONFIG": str(config)}
    from llmproxy import Proxy

    proxy = Proxy.from_env(env)
    proxy.chat("Hello", user="ada")
    proxy.close()
    shown = run(["usage", "--user", "ada"], env)
    assert (
        "(user:ada): used 9 / limit 500 tokens, reserved 0, remaining 491, resets " in shown.stdout
    )
    other = run(["usage", "--user", "bob"], env)
    assert "(user:bob): used 0 / limit 500 tokens" in other.stdout


@pytest.mark.parametrize("mode", [[], ["--no-stream"]])
def test_an_answer_cut_short_by_the_budget_says_so_on_stderr(
    env: dict[str, str], upstream: FakeOpenAI, mode: list[str]
) -> None:
    upstream.enqueue(Reply(text=" ".join(f"w{i}" for i in range(60))))
    result = run(["chat", "Hello", *mode], {**env, "LLMPROXY_MAX_TOKENS": "40"})
    assert result.returncode == 0, result.stderr
    cap = chat_requests(upstream)[0]["max_completion_tokens"]
    assert len(result.stdout.split()) == cap < 60
    assert f"cut short at {cap} output tokens" in result.stderr

    upstream.enqueue(Reply(text="short"))
    roomy = run(["chat", "Hello", *mode], {**env, "LLMPROXY_MAX_TOKENS": "100000"})
    assert roomy.returncode == 0 and "cut short" not in roomy.stderr


def test_plugins_command_lists_configured_providers(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "llmproxy.toml"
    config.write_text(
        '[providers.ollama]\nkind = "openai-compatible"\npreset = "ollama"\n'
        '[providers.groq]\nkind = "openai-compatible"\npreset = "groq"\n'
    )
    result = run(["plugins"], {**env, "LLMPROXY_CONFIG": str(config)})
    assert "provider openai-compatible" in result.stdout
    lines = result.stdout.split("configured providers:\n", 1)[1].splitlines()
    assert lines == [
        "    groq  [openai-compatible] https://api.groq.com/openai/v1  (key from GROQ_API_KEY)",
        "    ollama  [openai-compatible] http://localhost:11434/v1  (no key)",
    ]
    bad = run(["plugins"], {**env, "LLMPROXY_PROVIDERS__X__KIND": "openai-compatible"})
    assert bad.returncode == 2 and "providers.x.base_url" in bad.stderr


def test_providers_command_lists_installed_and_configured(
    env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "llmproxy.toml"
    config.write_text(
        '[providers.ollama]\nkind = "openai-compatible"\npreset = "ollama"\n'
        '[providers.groq]\nkind = "openai-compatible"\npreset = "groq"\n'
        '[providers.azure]\nkind = "openai-compatible"\npreset = "azure"\n'
        'base_url = "https://res.openai.azure.com/openai/deployments/d"\n'
        "[providers.mistral]\ntimeout = 5\n"
    )
    secret = "gsk-very-secret-value-123"
    environ = {
        **env,
        "LLMPROXY_CONFIG": str(config),
        "GROQ_API_KEY": secret,
        "ANTHROPIC_API_KEY": "",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
    }
    result = run(["providers"], environ)
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout and API_KEY not in result.stdout
    rows = {line.split()[0]: " ".join(line.split()) for line in result.stdout.splitlines()}
    assert rows["NAME"] == "NAME KIND BASE URL KEY"
    assert rows["groq"] == (
        "groq openai-compatible https://api.groq.com/openai/v1 GROQ_API_KEY (set)"
    )
    assert rows["ollama"] == "ollama openai-compatible http://localhost:11434/v1 none"
    assert rows["azure"] == (
        "azure openai-compatible https://res.openai.azure.com/openai/deployments/d"
        " AZURE_OPENAI_API_KEY (not set) in header api-key"
    )
    assert rows["anthropic"] == (
        "anthropic plugin anthropic http://127.0.0.1:9 ANTHROPIC_API_KEY (not set)"
    )
    assert rows["openai"].startswith("openai plugin openai ")
    assert "OPENAI_API_KEY (set)" in rows["openai"]  # the test environment's key, by name
    assert rows["mistral"] == "mistral configured, no plugin installed - -"
    assert "openai-compatible" not in rows  # a kind, not a provider
    names = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert names == sorted(names)


def test_chat_cache_answers_a_repeated_prompt_from_the_cache(
    env: dict[str, str], upstream: FakeOpenAI, tmp_path: Path
) -> None:
    """``--cache`` keeps the reply across runs; ``--cache TTL`` sets its time to live."""
    cached = {**env, "LLMPROXY_CACHE_URL": f"sqlite:///{tmp_path}/cache.db"}
    start = time.time()
    first = run(["chat", "Hello", "--cache", "--usage"], cached)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "Echo: Hello\n"
    assert "from the response cache" not in first.stderr
    # The bare flag before the prompt, and a whole answer: the same key, so a hit.
    again = run(["chat", "--cache", "Hello", "--no-stream", "--usage"], cached)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "Echo: Hello\n"
    assert "tokens: input 0, output 0, total 0 (from the response cache)" in again.stderr
    assert len(chat_requests(upstream)) == 1
    # Without --cache the cache is not asked.
    assert run(["chat", "Hello"], cached).returncode == 0
    assert len(chat_requests(upstream)) == 2

    before = time.time()
    ttl = run(["chat", "--cache", "600", "Bonjour"], cached)
    assert ttl.returncode == 0, ttl.stderr
    assert ttl.stdout == "Echo: Bonjour\n"
    conn = sqlite3.connect(tmp_path / "cache.db")
    try:
        expiries = sorted(e for (e,) in conn.execute("SELECT expires_at FROM response_cache"))
    finally:
        conn.close()
    # "Hello" lives the default hour, "Bonjour" the 600 seconds asked.
    assert len(expiries) == 2
    assert before + 600 <= expiries[0] <= time.time() + 600
    assert start + 3600 <= expiries[1] <= before + 3600


def test_chat_cache_refuses_a_bad_ttl_or_no_cache(env: dict[str, str]) -> None:
    for bad in ("0", "-5", "inf"):
        result = run(["chat", "--cache", bad, "Hello"], env)
        assert result.returncode == 2
        assert "--cache takes a time to live in seconds above 0" in result.stderr
    result = run(["chat", "--cache", "Hello", "again"], env)
    assert result.returncode == 2 and "give the prompt once" in result.stderr
    result = run(["chat", "Hello", "--cache"], env)  # no LLMPROXY_CACHE_URL
    assert result.returncode == 2
    assert "LLMPROXY_CACHE_URL" in result.stderr and "Traceback" not in result.stderr
