"""A worker process of the fault tests: calls a Proxy from threads until its budget refuses.

Run as ``python worker.py SPEC`` (SPEC: JSON with ``name``, ``environ``, ``config``,
``ledger``, ``threads``, ``calls``, ``max_output_tokens``). Prints one JSON line per call:
``{"ok": total_tokens}``, ``{"refused": message}`` (BudgetExceeded: the thread stops) or
``{"error": text}`` (any other error: the thread stops).
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from llmproxy import BudgetExceeded, Proxy


def main(argv: list[str]) -> int:
    """Run the worker described by ``argv[1]``."""
    spec: dict[str, Any] = json.loads(argv[1])
    proxy = Proxy(
        spec["config"], ledger=spec["ledger"], history="memory://", environ=spec["environ"]
    )
    lock = threading.Lock()

    def say(line: dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()

    def run(thread: int) -> None:
        for number in range(int(spec["calls"])):
            try:
                answer = proxy.chat(
                    f"{spec['name']} thread {thread} call {number}",
                    max_output_tokens=int(spec["max_output_tokens"]),
                )
            except BudgetExceeded as exc:
                say({"refused": str(exc)})
                return
            except Exception as exc:
                say({"error": f"{type(exc).__name__}: {exc}"})
                return
            say({"ok": answer.usage.total_tokens})

    threads = [threading.Thread(target=run, args=(n,)) for n in range(int(spec["threads"]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
