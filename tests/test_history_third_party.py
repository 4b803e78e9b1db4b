"""A third party's history store, defined only here, installed as a distribution outside the
repo's packages, found through its ``llmproxy`` entry point, passes the store contract."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmproxy import HistoryRecord, Message, Proxy
from llmproxy.history.base import HistoryStore
from llmproxy.plugins import Plugins
from llmproxy_testing.contracts import HistoryStoreContract

DIST = "acme-history"
MODULE = "acme_history_store"

# A complete, independent store: rows in insertion order under one lock.
SOURCE = """
    import threading
    import llmproxy
    from llmproxy.history.base import SessionInfo

    class AcmeStore:
        def __init__(self, url):
            self.url = url
            self._lock = threading.Lock()
            self._rows = []  # (sequence, record)
            self._seq = 0

        def load(self, session_id, limit=None):
            if limit is not None and limit < 0:
                raise llmproxy.InvalidRequest("negative limit", field="limit")
            with self._lock:
                mine = [r for _, r in self._rows if r.session_id == session_id]
            if limit is None:
                return mine
            return mine[-limit:] if limit else []

        def append(self, records):
            with self._lock:
                stored = {r.id for _, r in self._rows if r.id is not None}
                for record in records:
                    if record.id is not None and record.id in stored:
                        continue
                    stored.add(record.id)
                    self._seq += 1
                    self._rows.append((self._seq, record))

        def sessions(self):
            with self._lock:
                rows = list(self._rows)
            found = {}
            for seq, r in rows:
                n, first, last, _ = found.get(r.session_id, (0, r.created_at, r.created_at, 0))
                first, last = min(first, r.created_at), max(last, r.created_at)
                found[r.session_id] = (n + 1, first, last, seq)
            ordered = sorted(found.items(), key=lambda kv: (kv[1][2], kv[1][3]), reverse=True)
            return [SessionInfo(sid, n, first, last) for sid, (n, first, last, _) in ordered]

        def delete(self, session_id):
            with self._lock:
                before = len(self._rows)
                self._rows = [(s, r) for s, r in self._rows if r.session_id != session_id]
                return before - len(self._rows)

        def close(self):
            pass

        async def aload(self, session_id, limit=None):
            return self.load(session_id, limit)

        async def aappend(self, records):
            self.append(records)

        async def asessions(self):
            return self.sessions()

        async def adelete(self, session_id):
            return self.delete(session_id)

    @llmproxy.hookimpl
    def register_history_stores(register):
        register("acme", lambda url, environ: AcmeStore(url))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Lay out an installed distribution (dist-info with the entry point) on a new path entry."""
    site = tmp_path_factory.mktemp("site-packages")
    (site / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    info = site / f"{DIST.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[llmproxy]\nacme = {MODULE}\n")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        sys.modules.pop(MODULE, None)


@pytest.fixture(scope="module")
def plugins(installed: Path) -> Plugins:
    return Plugins(environ={})


class TestThirdPartyStoreFromItsEntryPoint(HistoryStoreContract):
    @pytest.fixture
    def store(self, plugins: Plugins) -> HistoryStore:
        factory = plugins.registry.history_stores["acme"]
        return factory("acme://anything", {})


def test_discovered_from_outside_the_repo(plugins: Plugins, installed: Path) -> None:
    info = next(i for i in plugins.infos() if i.name == "acme")
    assert (info.distribution, info.version) == (DIST, "1.0")
    assert info.registers == ("history store acme://",)
    module = sys.modules[MODULE]
    assert Path(module.__file__ or "").parent == installed  # not from the repo's packages
    assert not Path(module.__file__ or "").is_relative_to(Path(__file__).resolve().parent.parent)


def test_the_proxy_uses_it_by_url(plugins: Plugins) -> None:
    proxy = Proxy({"history_url": "acme://x"}, plugins=plugins, environ={})
    store = proxy.history
    assert type(store).__name__ == "AcmeStore"
    store.append([HistoryRecord("s", Message("user", "hi"))])
    assert [r.content for r in proxy.history.load("s")] == ["hi"]
    proxy.close()
