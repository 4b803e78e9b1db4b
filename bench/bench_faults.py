"""The fault suite's figures: tokens billed vs budget after each fault, answers lost, duplicates.

Runs ``tests/faults`` (``python -m pytest tests/faults -q -p no:randomly``) in a subprocess
with ``LLMPROXY_FAULT_FIGURES`` naming a temporary file, to which each test appends one JSON
line of figures, and prints them as a Markdown table. The full form (the default) sets the
scenarios' sizes bigger than the CI's fast form through ``LLMPROXY_FAULT_<NAME>`` (see
:data:`FULL`): 16 calls of a SIGKILLed worker and 4 survivors on a 12,000-token budget, 1,000
idle gateway connections, a 30 MB body of 900,000 tiny messages, 50 calls through a Redis
outage. ``--fast`` runs the CI sizes. Exits non-zero when a test failed or recorded nothing.

    .venv/bin/python bench/bench_faults.py            # full form (a few minutes)
    .venv/bin/python bench/bench_faults.py --fast     # the CI sizes

Bounded: pytest gets ``--timeout`` seconds (default 1,800 full, 600 fast); past that its
process group (pytest and every process it started) is killed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIGURES_ENV = "LLMPROXY_FAULT_FIGURES"
#: The full form's sizes (``LLMPROXY_FAULT_<NAME>``); unset, each test uses its fast size.
FULL: Mapping[str, int] = {
    "WORKER_BUDGET": 12_000,  # fast: 3,000
    "VICTIM_CALLS": 16,  # fast: 4
    "SURVIVORS": 4,  # fast: 2
    "LEASE_BUDGET": 600,  # fast: 60
    "REDIS_CALLS": 50,  # fast: 5
    "IDLE_CONNECTIONS": 1_000,  # fast: 200
    "BODY_MESSAGES": 900_000,  # fast: 300,000 (about 10 MB; 900,000 make about 30 MB)
    "INPUT_BUDGET": 2_000,  # fast: 200
}
COLUMNS = ("fault", "store", "budget", "billed", "ledger used", "answers lost", "duplicates")


def size_environ(fast: bool) -> dict[str, str]:
    """The size variables of a form: none for the fast form, :data:`FULL` for the full one."""
    return {} if fast else {f"LLMPROXY_FAULT_{name}": str(value) for name, value in FULL.items()}


def run_suite(figures: Path, sizes: Mapping[str, str], timeout: float, extra: Sequence[str]) -> int:
    """Run the fault suite in a new process group; return pytest's exit code.

    Past ``timeout`` seconds the whole group (pytest and what it started) is killed, and the
    code is 124.
    """
    env = {**os.environ, **sizes, FIGURES_ENV: str(figures)}
    for name in FULL:  # a size left in the caller's environment would skew the fast form
        if f"LLMPROXY_FAULT_{name}" not in sizes:
            env.pop(f"LLMPROXY_FAULT_{name}", None)
    command = [sys.executable, "-m", "pytest", "tests/faults", "-q", "-p", "no:randomly", *extra]
    print("+", " ".join(command), flush=True)
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"pytest still runs after {timeout:g} s: killing its process group", flush=True)
        return 124
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def read_figures(path: Path) -> list[dict[str, Any]]:
    """The figures the tests recorded, one dict per JSON line."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def number(value: Any) -> str:
    """A figure for the table: thousands separated, ``—`` for None."""
    if value is None:
        return "—"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The figures as a Markdown table (with the notes as a last column)."""
    header = [*COLUMNS, "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            str(row["fault"]),
            str(row["store"]),
            number(row["budget"]),
            number(row["billed"]),
            number(row["used"]),
            number(row["answers_lost"]),
            number(row["duplicates"]),
            str(row.get("notes", "")).replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite in the chosen form, print the table; non-zero if a test failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="the CI sizes (the fast form)")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds before pytest is killed"
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k redis)")
    args = parser.parse_args(argv)
    timeout = args.timeout if args.timeout is not None else (600.0 if args.fast else 1800.0)
    if timeout <= 0:
        parser.error(f"--timeout must be positive, got {timeout:g}")
    sizes = size_environ(args.fast)
    with tempfile.TemporaryDirectory(prefix="llmproxy-faults-") as scratch:
        figures = Path(scratch) / "figures.jsonl"
        code = run_suite(figures, sizes, timeout, args.pytest_args)
        rows = read_figures(figures)
    form = "fast" if args.fast else "full"
    settings = ", ".join(f"{name}={value}" for name, value in sizes.items()) or "CI sizes"
    print(f"\nfault suite, {form} form ({settings})")
    print(table(rows))
    if code != 0:
        print(f"\nFAILED: pytest exited {code}; the table holds what the tests recorded")
        return code
    if not rows:
        print("\nFAILED: no test recorded figures")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
