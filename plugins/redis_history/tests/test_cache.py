"""Round trips, counted on the server: 1 per append, 1 per load, 0 for a cached load; and the
cache sees other processes' writes through Redis client tracking."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable

import redis

from llmproxy.history.base import HistoryRecord
from llmproxy.types import Message
from llmproxy_redis_history import RedisHistoryStore

from .conftest import RoundTrips

Make = Callable[..., RedisHistoryStore]


def exchange(session: str, n: int) -> list[HistoryRecord]:
    return [
        HistoryRecord(session, Message("user", f"q{n}"), created_at=float(n)),
        HistoryRecord(session, Message("assistant", f"a{n}"), created_at=float(n)),
    ]


def contents(records: list[HistoryRecord]) -> list[str]:
    return [r.content for r in records]


def warm(store: RedisHistoryStore) -> None:
    """Open the connections and load the scripts, so only steady-state trips are counted."""
    store.load("warm-up")
    store.append(exchange("warm-up", 0))
    store.delete("warm-up")


def test_one_round_trip_per_append_and_load_none_when_cached(
    make_store: Make, round_trips: RoundTrips
) -> None:
    store = make_store()
    uncached = make_store(cache=False)
    warm(store)
    warm(uncached)
    round_trips()
    assert store.load("s") == []
    assert round_trips() == 1
    for n in range(3):
        store.append(exchange("s", n))
        assert round_trips() == 1
    for limit in (None, 4, 1):
        assert len(store.load("s", limit)) == (limit or 6)
        assert round_trips() == 0  # read after our own writes: from the cache
    assert contents(uncached.load("s")) == ["q0", "a0", "q1", "a1", "q2", "a2"]
    assert round_trips() == 1
    assert contents(uncached.load("s", 2)) == ["q2", "a2"]
    assert round_trips() == 1
    assert len(uncached.sessions()) == 1
    assert round_trips() == 2
    assert uncached.delete("s") == 6
    assert round_trips() == 1
    assert store.cache is not None and store.cache.hits == 3


def test_one_round_trip_with_cap_and_ttl(make_store: Make, round_trips: RoundTrips) -> None:
    store = make_store(max_messages=4, ttl=60)
    warm(store)
    store.load("s")
    round_trips()
    for n in range(4):
        store.append(exchange("s", n))
        assert round_trips() == 1
    assert contents(store.load("s")) == ["q2", "a2", "q3", "a3"]
    assert round_trips() == 0


async def test_async_round_trips(make_store: Make, round_trips: RoundTrips) -> None:
    store = make_store()
    await store.aload("warm-up")
    await store.aappend(exchange("warm-up", 0))
    round_trips()
    assert await store.aload("s") == []
    assert round_trips() == 1
    await store.aappend(exchange("s", 1))
    assert round_trips() == 1
    assert contents(await store.aload("s")) == ["q1", "a1"]
    assert round_trips() == 0
    await store.aclose()


def test_another_writer_is_seen_on_the_next_read(make_store: Make, round_trips: RoundTrips) -> None:
    mine, theirs = make_store(), make_store()
    warm(mine)
    mine.append(exchange("s", 1))
    mine.load("s")
    assert contents(mine.load("s")) == ["q1", "a1"]
    theirs.append(exchange("s", 2))
    round_trips()
    assert contents(mine.load("s")) == ["q1", "a1", "q2", "a2"]
    assert round_trips() == 0  # extended from the feed: nothing read from Redis
    assert contents(mine.load("s")) == ["q1", "a1", "q2", "a2"]
    assert round_trips() == 0
    assert theirs.delete("s") == 4
    assert mine.load("s") == []


def test_a_new_session_of_another_writer_is_cached_from_the_feed(
    make_store: Make, round_trips: RoundTrips
) -> None:
    mine, theirs = make_store(), make_store()
    warm(mine)
    theirs.append(exchange("n", 1))
    round_trips()
    assert contents(mine.load("n")) == ["q1", "a1"]
    assert round_trips() == 0  # the feed held the whole session


def test_a_gap_in_the_versions_drops_the_session(make_store: Make, round_trips: RoundTrips) -> None:
    mine = make_store()
    warm(mine)
    mine.append(exchange("g", 1))
    mine.load("g")
    round_trips()
    assert contents(mine.load("g")) == ["q1", "a1"]
    assert round_trips() == 0  # cached at version 1
    assert mine.cache is not None
    mine.cache.feed("g", 3, [], 4, None, None)  # version 2 was never seen here
    assert contents(mine.load("g")) == ["q1", "a1"]
    assert round_trips() == 1  # read again from Redis


def test_another_process_is_seen_on_the_next_read(
    make_store: Make, redis_url: str, round_trips: RoundTrips
) -> None:
    mine = make_store()
    mine.load("s")
    mine.append(exchange("s", 1))
    assert contents(mine.load("s")) == ["q1", "a1"]
    script = textwrap.dedent(
        f"""
        from llmproxy import HistoryRecord, Message
        from llmproxy_redis_history import RedisHistoryStore
        store = RedisHistoryStore({redis_url!r}, environ={{}})
        store.append([HistoryRecord("s", Message("user", "from another process"))])
        store.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    round_trips()
    assert contents(mine.load("s")) == ["q1", "a1", "from another process"]
    assert round_trips() == 0  # its append came on the feed


def test_unrelated_writes_keep_the_cache(make_store: Make, round_trips: RoundTrips) -> None:
    mine, theirs = make_store(), make_store()
    warm(mine)
    mine.load("s")
    mine.append(exchange("s", 1))
    theirs.append(exchange("other", 1))
    round_trips()
    assert contents(mine.load("s")) == ["q1", "a1"]
    assert round_trips() == 0


def test_flush_and_lost_tracking_clear_the_cache(
    make_store: Make, raw: redis.Redis, round_trips: RoundTrips
) -> None:
    store = make_store()
    store.load("s")
    store.append(exchange("s", 1))
    assert contents(store.load("s")) == ["q1", "a1"]
    raw.flushall()
    # A round trip after it: the server wrote the flush's push to the tracking connection
    # before it could answer this (pending replies go out before the next command is read).
    raw.ping()
    assert store.load("s") == []
    store.append(exchange("s", 2))
    assert contents(store.load("s")) == ["q2", "a2"]
    # Kill the tracking connection: pushes may be lost, so nothing cached is trusted.
    tracking = [c["id"] for c in raw.client_list() if "t" in c["flags"]]
    assert len(tracking) == 1
    raw.client_kill_filter(_id=tracking[0])
    raw.ping()  # the killed connection was closed before the kill was answered; this is a fence
    raw.delete(store.keys.messages("s").replace("{s", "{x"))  # other traffic
    round_trips()
    assert contents(store.load("s")) == ["q2", "a2"]
    assert round_trips() == 1  # not from the cache: it was cleared when tracking broke
    assert contents(store.load("s")) == ["q2", "a2"]  # tracking reopens, the load is cached
    assert contents(store.load("s")) == ["q2", "a2"]
    round_trips()
    assert contents(store.load("s")) == ["q2", "a2"]
    assert round_trips() == 0
    assert len([c for c in raw.client_list() if "t" in c["flags"]]) == 1


def test_concurrent_writers_in_one_process_never_leave_a_wrong_cache(make_store: Make) -> None:
    import threading

    store = make_store()
    store.load("s")

    def write(w: int) -> None:
        for n in range(20):
            store.append([HistoryRecord("s", Message("user", f"w{w}-{n}"))])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    truth = contents(make_store(cache=False).load("s"))
    assert len(truth) == 80
    assert contents(store.load("s")) == truth


def test_cache_off_on_request(make_store: Make, round_trips: RoundTrips) -> None:
    store = make_store(cache=False)
    warm(store)
    store.append(exchange("s", 1))
    round_trips()
    store.load("s")
    store.load("s")
    assert round_trips() == 2
    assert store.cache is None


def test_a_forked_child_tracks_on_its_own_connection(make_store: Make) -> None:
    import multiprocessing

    store = make_store()
    store.load("s")
    store.append(exchange("s", 1))
    assert contents(store.load("s")) == ["q1", "a1"]

    def child() -> None:
        ok = contents(store.load("s")) == ["q1", "a1"]
        store.append(exchange("s", 2))  # through the store the child inherited
        ok = ok and contents(store.load("s")) == ["q1", "a1", "q2", "a2"]
        raise SystemExit(0 if ok else 3)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(30)
    assert process.exitcode == 0
    # The parent's tracking connection was left alone, and the child wrote as another writer.
    assert contents(store.load("s")) == ["q1", "a1", "q2", "a2"]


def test_a_writer_that_may_not_publish_still_stores_and_invalidates(
    make_store: Make, raw: redis.Redis, redis_url: str, round_trips: RoundTrips
) -> None:
    raw.acl_setuser(
        "nopub",
        enabled=True,
        passwords=["+secret-pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-publish"],
    )
    try:
        mine = make_store()
        warm(mine)
        mine.append(exchange("s", 1))
        mine.load("s")
        assert contents(mine.load("s")) == ["q1", "a1"]
        theirs = make_store(redis_url.replace("redis://", "redis://nopub:secret-pw@"))
        theirs.append(exchange("s", 2))  # the feed refuses it: the mark tells the others
        round_trips()
        assert contents(mine.load("s")) == ["q1", "a1", "q2", "a2"]
        assert round_trips() == 1  # dropped, so read again from Redis
    finally:
        raw.acl_deluser("nopub")
