"""Gateway keys: budget specs, hashed storage, verification, revocation, the keys command."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from llmproxy import CallScope, CostBudget, LLMBudget, RequestsPerMinute
from llmproxy.config import ProxyConfig
from llmproxy.errors import ConfigError, StoreError
from llmproxy_gateway import KeyStore, key_policies, parse_budget
from llmproxy_gateway.keys import KeyRecord, admin_matches, parse_models
from llmproxy_gateway.models import names_of

from .conftest import LLMPROXY, clean_env


@pytest.mark.parametrize(
    ("spec", "kind", "limit", "window", "name"),
    [
        ("tokens:100000/month", LLMBudget, 100000, "month", "key-tokens-100000-month"),
        ("tokens:1_000", LLMBudget, 1000, "total", "key-tokens-1000-total"),
        ("usd:5/day", CostBudget, 5.0, "day", "key-usd-5-day"),
        ("USD:0.5/7d", CostBudget, 0.5, 7 * 86400.0, "key-usd-0.5-604800s"),
        ("requests:60/minute", RequestsPerMinute, 60, 60.0, "key-requests-60-60s"),
        ("requests:10", RequestsPerMinute, 10, 60.0, "key-requests-10-60s"),
        ("tokens:500/15m", LLMBudget, 500, 900.0, "key-tokens-500-900s"),
    ],
)
def test_budget_specs(spec: str, kind: type, limit: float, window: object, name: str) -> None:
    policy = parse_budget(spec)
    assert isinstance(policy, kind)
    assert policy.name == name
    assert policy.window == window  # type: ignore[attr-defined]
    assert policy.scope == "key"  # type: ignore[attr-defined]
    claim = policy.claim(CallScope("openai/gpt-4o", "openai", key="abc"))
    assert claim is not None and claim.limit == limit and claim.scope == "key:abc"


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("tokens", "KIND:AMOUNT"),
        ("coins:5/day", "KIND:AMOUNT"),
        ("tokens:5/fortnight", "window"),
        ("tokens:1.5/day", "whole number"),
        ("requests:5/day", "rolling window"),
        ("tokens:5/0s", "window"),
    ],
)
def test_bad_budget_specs(spec: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_budget(spec)


def test_keys_are_stored_hashed_and_verified(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db")
    record, key = store.create("alice", budgets=["tokens:100/day"], name="laptop")
    assert key.startswith(f"sk-llmp-{record.id}-") and len(key) > 50
    assert store.verify(key) == record
    assert store.verify(key + "x") is None
    assert store.verify(key.replace(record.id, "0" * 10)) is None
    assert store.verify("Bearer " + key) is None
    secret = key.split("-", 3)[3]
    raw = (tmp_path / "keys.db").read_bytes()
    assert secret.encode() not in raw and key.encode() not in raw
    row = (
        sqlite3.connect(tmp_path / "keys.db")
        .execute("SELECT salt, digest FROM gateway_keys")
        .fetchone()
    )
    assert len(row[0]) == 32 and len(row[1]) == 64  # a 16-byte salt, a sha256
    assert "secret" not in repr(record) and row[1] not in repr(record)
    # another process (another store on the same file) sees creation and revocation
    other = KeyStore(tmp_path / "keys.db")
    assert other.verify(key) is not None
    store.revoke(record.id)
    assert other.verify(key) is None
    assert other.get(record.id) is not None and not other.get(record.id).active  # type: ignore[union-attr]
    store.close()
    other.close()


def test_key_policies_apply_each_keys_own_budgets() -> None:
    store = KeyStore(None)
    a, _ = store.create("ann", budgets=["tokens:100/day", "requests:5/minute"])
    b, _ = store.create("bob", budgets=["usd:1/month"])
    slots = key_policies(store)

    def claims(key: str | None) -> list[tuple[str, float]]:
        scope = CallScope("openai/gpt-4o", "openai", key=key)
        return [(c.key, c.limit) for s in slots if (c := s.claim(scope)) is not None]

    assert claims(a.id) == [
        (f"key-tokens-100-day|key:{a.id}", 100),
        (f"key-requests-5-60s|key:{a.id}", 5),
    ]
    assert claims(b.id) == [(f"key-usd-1-month|key:{b.id}", 1.0)]
    assert claims(None) == [] and claims("unknown") == []
    with pytest.raises(ConfigError, match="at most 4"):
        store.create("cy", budgets=["tokens:1", "tokens:2", "tokens:3", "tokens:4", "tokens:5"])
    with pytest.raises(ConfigError, match="repeat"):
        store.create("cy", budgets=["tokens:1/day", "tokens:1/day"])
    with pytest.raises(ConfigError, match="user"):
        store.create(" ")
    with pytest.raises(ConfigError, match="no key"):
        store.revoke("0123456789")
    with pytest.raises(ConfigError, match="not a key id"):
        store.revoke("nope")


def test_admin_key_comparison() -> None:
    assert admin_matches("admin-0123456789abcdef", "admin-0123456789abcdef")
    assert not admin_matches("admin-0123456789abcdeF", "admin-0123456789abcdef")
    assert not admin_matches("anything", None)


def run(args: list[str], data: Path) -> subprocess.CompletedProcess[str]:
    env = clean_env(LLMPROXY_DATA_DIR=str(data))
    return subprocess.run(
        [LLMPROXY, "keys", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_keys_command(tmp_path: Path) -> None:
    created = run(
        ["create", "--user", "bob", "--budget", "usd:5/day", "--budget", "requests:60/minute"],
        tmp_path,
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.split()[-1]  # the key is the last word of the output
    assert key.startswith("sk-llmp-")
    key_id = key.split("-")[2]
    assert f"created key {key_id} for user bob" in created.stdout
    store = KeyStore(tmp_path / "keys.db")
    record = store.verify(key)
    assert record is not None and record.budgets == ("usd:5/day", "requests:60/minute")
    store.close()
    admin = run(["create", "--admin"], tmp_path)
    assert admin.returncode == 0 and "for user admin (admin)" in admin.stdout
    listed = run(["list"], tmp_path)
    assert listed.returncode == 0
    assert (
        f"{key_id}\tbob\tusd:5/day, requests:60/minute\tany model\tcache off\tactive"
        in listed.stdout
    )
    assert key.split("-", 3)[3] not in listed.stdout
    revoked = run(["revoke", key_id], tmp_path)
    assert revoked.returncode == 0 and f"revoked key {key_id}" in revoked.stdout
    assert "revoked" in run(["list"], tmp_path).stdout.splitlines()[0]
    bad = run(["create", "--user", "x", "--budget", "gold:5"], tmp_path)
    assert bad.returncode == 2 and "KIND:AMOUNT" in bad.stderr and "Traceback" not in bad.stderr
    assert run(["create"], tmp_path).returncode == 2


def test_sqlite_failures_are_store_errors(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db")
    _record, key = store.create("zoe")
    store._conn.execute("DROP TABLE dashboard_sessions")
    with pytest.raises(StoreError, match="gateway key store"):
        store.start_session(60)
    store.close()  # a closed connection fails every statement
    for call in (lambda: store.verify(key), lambda: store.session_active("t")):
        with pytest.raises(StoreError, match="gateway key store"):
            call()


def test_usage_command_shows_a_keys_budget(tmp_path: Path) -> None:
    from llmproxy import Proxy
    from llmproxy_testing.fake_openai import FakeOpenAI

    data = tmp_path / "data"
    store = KeyStore(data / "keys.db")
    record, _secret = store.create("ann", budgets=["tokens:1000/month"])
    upstream_key = "sk-upstream-0123456789abcdefXYZ"
    with FakeOpenAI(api_key=upstream_key) as upstream:
        environ = {
            "OPENAI_API_KEY": upstream_key,
            "OPENAI_BASE_URL": upstream.base_url,
            "LLMPROXY_DATA_DIR": str(data),
        }
        proxy = Proxy(environ=environ, budgets=key_policies(store))
        try:
            spent = proxy.chat("Hello", key=record.id).usage.total_tokens
        finally:
            proxy.close()
    store.close()
    env = clean_env(LLMPROXY_DATA_DIR=str(data))
    shown = subprocess.run(
        [LLMPROXY, "usage", "--key", record.id], env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(
        f"key-tokens-1000-month (key:{record.id}): used {spent} / limit 1000 tokens,"
        f" reserved 0, remaining {1000 - spent}, resets "
    )
    other = subprocess.run(
        [LLMPROXY, "usage", "--key", "someone-else"], env=env, capture_output=True, text=True
    )
    assert other.stdout == "no budgets match\n"


def test_a_keys_model_allow_list_is_stored_and_listed(tmp_path: Path) -> None:
    created = run(["create", "--user", "eve", "--models", "openai/*, fast"], tmp_path)
    assert created.returncode == 0, created.stderr
    assert "models: openai/*, fast" in created.stdout
    key = created.stdout.split()[-1]
    store = KeyStore(tmp_path / "keys.db")
    record = store.verify(key)
    assert record is not None and record.models == ("openai/*", "fast")
    assert record.to_json()["models"] == ["openai/*", "fast"]
    store.close()
    assert "\teve\t-\topenai/*, fast\tcache off\tactive" in run(["list"], tmp_path).stdout
    bad = run(["create", "--user", "x", "--models", "openai/*,,fast"], tmp_path)
    assert bad.returncode == 2 and "empty entry" in bad.stderr and "Traceback" not in bad.stderr
    spaced = run(["create", "--user", "x", "--models", "open ai/*"], tmp_path)
    assert spaced.returncode == 2 and "'open ai/*'" in spaced.stderr


def test_a_keys_cache_setting_is_stored_and_listed(tmp_path: Path) -> None:
    made = {}
    for user, flags, shown in (
        ("ann", ["--cache"], "on"),
        ("bob", ["--cache", "600"], "600 s"),
        ("cy", ["--cache", "2.5", "--admin"], "2.5 s"),
        ("dee", [], "off"),
        ("eve", ["--cache", "off"], "off"),
    ):
        created = run(["create", "--user", user, *flags], tmp_path)
        assert created.returncode == 0, created.stderr
        assert f", cache: {shown}\n" in created.stdout
        made[user] = (created.stdout.split()[-1], shown)
    store = KeyStore(tmp_path / "keys.db")
    try:
        stored = {user: store.verify(secret) for user, (secret, _shown) in made.items()}
    finally:
        store.close()
    assert {user: r.cache for user, r in stored.items() if r is not None} == {
        "ann": True,
        "bob": 600.0,
        "cy": 2.5,
        "dee": False,
        "eve": False,
    }
    listed = run(["list"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = {line.split("\t")[1]: line.split("\t") for line in listed.stdout.splitlines()}
    for user, (_secret, shown) in made.items():
        assert lines[user][4] == f"cache {shown}", lines[user]
    assert lines["cy"][5] == "active admin"
    for bad in ("0", "-5", "soon"):
        refused = run(["create", "--user", "x", "--cache", bad], tmp_path)
        assert refused.returncode == 2, refused.stdout
        assert "--cache takes on, off or a time to live" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_may_use_matches_names_aliases_and_patterns() -> None:
    config = ProxyConfig(default_model="openai/gpt-5.4-mini", aliases={"fast": "openai/gpt-4o"})
    pattern = KeyRecord("0123456789", "u", models=("openai/*",))
    alias_only = KeyRecord("0123456789", "u", models=("fast",))
    anything = KeyRecord("0123456789", "u")
    assert pattern.may_use(*names_of(config, "fast"))  # through its target
    assert pattern.may_use(*names_of(config, "gpt-4o-mini"))  # a bare name: the default provider
    assert not pattern.may_use(*names_of(config, "gemini/gemini-2.5-flash"))
    assert alias_only.may_use(*names_of(config, "fast"))
    assert not alias_only.may_use(*names_of(config, "openai/gpt-4o"))  # not by its own name
    assert anything.may_use("anything/at-all")
    with pytest.raises(ConfigError, match="at most 64"):
        parse_models([f"m{i}" for i in range(65)])


def test_a_store_made_before_model_allow_lists_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE gateway_keys (id TEXT PRIMARY KEY, salt TEXT NOT NULL, digest TEXT NOT"
        ' NULL, "user" TEXT NOT NULL, budgets TEXT NOT NULL, admin INTEGER NOT NULL, name TEXT,'
        " created_at REAL NOT NULL, revoked_at REAL)"
    )
    old.execute(
        "INSERT INTO gateway_keys VALUES ('0123456789', '00', 'x', 'old', '[]', 0, NULL, 1.0, NULL)"
    )
    old.commit()
    old.close()
    store = KeyStore(path)
    try:
        record = store.get("0123456789")
        assert record is not None and record.models == ()
        new, _secret = store.create("new", models="fast")
        reopened = KeyStore(path)
        assert reopened.get(new.id) == new and new.models == ("fast",)
        reopened.close()
    finally:
        store.close()
