"""``llmproxy embed``: the vector as JSON, and ``--similar``'s pairs, against the fake upstream."""

from __future__ import annotations

import json

from llmproxy.cli import cosine
from llmproxy_testing._embeddings import fake_vector
from llmproxy_testing.fake_openai import FakeOpenAI
from tests.test_cli import run


def test_embed_prints_the_vector_as_json(env: dict[str, str], upstream: FakeOpenAI) -> None:
    done = run(["embed", "hello world", "--dimensions", "4", "--usage"], env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == fake_vector("hello world", 4)
    assert "tokens: input 2, output 0, total 2" in done.stderr
    body = [r.json() for r in upstream.requests if r.path == "/v1/embeddings"][-1]
    assert body["model"] == "text-embedding-3-small" and body["dimensions"] == 4


def test_embed_reads_stdin(env: dict[str, str]) -> None:
    done = run(["embed", "-m", "openai/text-embedding-3-large"], env, stdin="from stdin\n")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == fake_vector("from stdin")


def test_similar_prints_pairs_most_alike_first(env: dict[str, str]) -> None:
    texts = ["cat", "dog", "a kitten"]
    done = run(["embed", "--similar", *texts], env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    want = sorted(
        (
            (cosine(fake_vector(texts[i]), fake_vector(texts[j])), texts[i], texts[j])
            for i in range(3)
            for j in range(i + 1, 3)
        ),
        key=lambda p: -p[0],
    )
    assert lines == [f"{s:.4f}  {json.dumps(a)}  {json.dumps(b)}" for s, a, b in want]


def test_similar_needs_two_texts(env: dict[str, str]) -> None:
    done = run(["embed", "--similar", "alone"], env)
    assert done.returncode == 2 and "two or more" in done.stderr


def test_a_provider_without_embeddings_is_one_line(env: dict[str, str]) -> None:
    done = run(["embed", "x", "-m", "deepseek/deepseek-chat"], {**env, "DEEPSEEK_API_KEY": "sk-x"})
    assert done.returncode == 1
    assert done.stderr.strip().startswith("llmproxy: deepseek: has no embeddings model")
