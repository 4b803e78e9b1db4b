"""Start-up time of ``llmproxy --help`` (and other commands) against a bare ``python -c pass``.

    .venv/bin/python bench/bench_startup.py              # 20 runs of each, interleaved
    .venv/bin/python bench/bench_startup.py --runs 50 -- plugins

Runs alternate between the bare interpreter and the command so that the machine's drift hits
both alike; figures are the median and best wall-clock time of whole processes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> int:
    """Run the benchmark and print one line per side and their difference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("command", nargs="*", default=["--help"], help="llmproxy arguments")
    args = parser.parse_args()
    console = Path(sys.executable).with_name("llmproxy")
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "LLMPROXY_DATA_DIR": data_dir}
        bare_argv = [sys.executable, "-c", "pass"]
        command_argv = [str(console), *args.command]
        _time(bare_argv, env), _time(command_argv, env)  # warm the file cache
        bare: list[float] = []
        command: list[float] = []
        for _ in range(args.runs):
            bare.append(_time(bare_argv, env))
            command.append(_time(command_argv, env))
    name = "llmproxy " + " ".join(args.command)
    for label, runs in (("python -c pass", bare), (name, command)):
        print(
            f"{label:<24} median {statistics.median(runs) * 1000:7.1f} ms"
            f"   best {min(runs) * 1000:7.1f} ms"
        )
    extra = statistics.median(command) - statistics.median(bare)
    print(f"{'difference':<24} median {extra * 1000:7.1f} ms   ({args.runs} runs each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
