#!/usr/bin/env python3
"""Set up and check the llmproxy workspace with nothing but Python 3.11+ and pip.

    python3 scripts/dev.py install   # .venv: core, llmproxy-testing, every plugin (editable), tools
    python3 scripts/dev.py test      # install, start what tests need, ruff, mypy --strict, pytest

Extra arguments after `test` go to pytest (python3 scripts/dev.py test -k budget).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
TEST_TOOLS = [
    "pytest>=8",
    "pytest-asyncio>=0.24",
    "hypothesis>=6.100",
    "pytest-randomly>=3.15",
    "mypy>=1.11",
    "ruff>=0.6",
]


def run(*cmd: str | Path, check: bool = True) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, check=check).returncode


def members() -> list[Path]:
    """The workspace's distributions: the core, the test helpers, every plugin."""
    plugins = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))
    return [ROOT / "core", ROOT / "testing", *plugins]


def has_test_extra(member: Path) -> bool:
    """Whether a member declares a ``test`` extra (what its tests need beyond the package)."""
    import tomllib

    project = tomllib.loads((member / "pyproject.toml").read_text())["project"]
    return "test" in project.get("optional-dependencies", {})


def install() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 -- the script may run under an older python3
        sys.exit(f"llmproxy needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"+ creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    # Python's bundled pip (23.x) cannot match a plugin's pin on another member installed
    # editable with extras; a current pip can.
    probe = "import pip, sys; sys.exit(int(pip.__version__.split('.')[0]) < 24)"
    if subprocess.run([str(PY), "-c", probe], cwd=ROOT).returncode != 0:
        run(
            PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--upgrade", "pip"
        )
    editable: list[str | Path] = []
    for member in members():
        editable += ["-e", f"{member}[test]" if has_test_extra(member) else member]
    run(
        PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *editable, *TEST_TOOLS
    )


# Debian packages the tests need, by the program that shows they are there: the Redis tests
# start their own redis-server on loopback; the dashboard's end-to-end test drives chromium
# through Playwright (whose own browser download is not used).
DEBIAN_PACKAGES = {"redis-server": "redis-server", "chromium": "chromium"}


def ensure_debian_packages() -> None:
    """Install the Debian packages of DEBIAN_PACKAGES whose program is absent."""
    missing = [pkg for program, pkg in DEBIAN_PACKAGES.items() if not shutil.which(program)]
    if not missing:
        return
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        message = f"the tests need {', '.join(missing)}: apt-get install {' '.join(missing)}"
        if "redis-server" in missing or os.environ.get("CI"):
            sys.exit(message + " (Debian)")
        print(f"note: {message}; the browser tests are skipped until then", flush=True)
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"+ apt-get install {' '.join(missing)}", flush=True)
    subprocess.run([apt, "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        [apt, "install", "-y", "-qq", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def test(pytest_args: list[str]) -> int:
    install()
    ensure_debian_packages()
    env_note = "CI" if os.environ.get("CI") else "local"
    print(f"+ running checks ({env_note})", flush=True)
    src = [str(m / "src") for m in members()]
    # The tests, the benchmarks and this script are held to mypy --strict like the sources.
    tests = [str(m / "tests") for m in members() if (m / "tests").is_dir()]
    checked = [*src, *tests, "tests", "bench", "scripts", "conftest.py"]
    steps: list[list[str | Path]] = [
        [BIN / "ruff", "check", "."],
        [BIN / "ruff", "format", "--check", "."],
        [BIN / "mypy", *checked],
    ]
    for step in steps:
        code = run(*step, check=False)
        if code != 0:
            print(f"FAILED: {' '.join(str(s) for s in step)}", flush=True)
            return code
    code = run(PY, "-m", "pytest", *pytest_args, check=False)
    if code == 5:
        print("FAILED: pytest collected no tests", flush=True)
        return 1
    return code


def main() -> int:
    args = sys.argv[1:]
    if not args or args[0] not in {"install", "test"}:
        print(__doc__)
        return 2
    if args[0] == "install":
        install()
        print(f"installed; the command is {BIN / 'llmproxy'}")
        return 0
    return test(args[1:])


if __name__ == "__main__":
    sys.exit(main())
