#!/usr/bin/env python3
"""Build the Python handlers into Wasm components with componentize-py.

    python3 handlers/python/build.py [NAME ...]
    python3 handlers/python/build.py --check

Builds `handlers/python/NAME/app.py` (every handler folder when no NAME is given) into
`target/python/NAME.wasm` at the workspace root, against the contract in `wit/0.1.0`.
`--check` builds nothing: it says what is missing for a build (this Python's version, the
`venv` module the tools are installed with), and exits 1 if anything is.

It installs its own tools: a virtual environment in `handlers/python/.venv` with the
componentize-py pinned in `requirements.txt`, made on the first run and again only when
`requirements.txt` or the Python running this script changes. A component is rebuilt only
when one of its inputs (the handler's folder, the `evhost` package in `sdk/`, the WIT, the
tools) is newer than it, so a second run does nothing and takes well under a second. Runs
are serialised by a lock, so two builds at once (a test run and `evhost up --build`) wait for
each other instead of trampling the environment.

Needs Python 3.10 or later with `venv` and `pip`, and PyPI on the first run.
"""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKSPACE = HERE.parent.parent
WIT = WORKSPACE / "wit" / "0.1.0"
WORLD = "handler"
SDK = HERE / "sdk"
REQUIREMENTS = HERE / "requirements.txt"
VENV = HERE / ".venv"
STAMP = VENV / "evhost-requirements.sha256"
OUT = WORKSPACE / "target" / "python"
TOOL = VENV / ("Scripts/componentize-py.exe" if os.name == "nt" else "bin/componentize-py")

# What to do without `venv`: Debian and Ubuntu ship it (with the `ensurepip` it needs to put
# pip into a new environment) apart from python3.
VENV_HINT = (
    "install it (Debian/Ubuntu: apt install python3-venv) or run this script with another "
    "Python 3.10 or later"
)


def main(argv: list) -> int:
    if sys.version_info < (3, 10):
        return fail(f"Python 3.10 or later is needed, this is {sys.version.split()[0]} "
                    f"({sys.executable})")
    if argv == ["--check"]:
        problem = None if tools_installed() else venv_problem()
        return fail(problem) if problem else 0
    names = argv or sorted(p.name for p in HERE.iterdir() if (p / "app.py").is_file())
    for name in names:
        if not (HERE / name / "app.py").is_file():
            return fail(f"no Python handler `{name}`: {HERE / name / 'app.py'} does not exist")
    OUT.mkdir(parents=True, exist_ok=True)
    with locked(OUT / ".build.lock"):
        tool = ensure_tools()
        for name in names:
            build(tool, name)
    return 0


def requirements_digest() -> str:
    """What the installed tools must have been installed for: the pins and this Python."""
    return hashlib.sha256(REQUIREMENTS.read_bytes() + sys.version.encode()).hexdigest()


def tools_installed() -> bool:
    """Whether our virtual environment holds the pinned componentize-py for this Python."""
    return (STAMP.is_file() and STAMP.read_text().strip() == requirements_digest()
            and TOOL.is_file())


def venv_problem():
    """Why this Python cannot make our virtual environment with pip in it, or None."""
    try:
        import ensurepip
        import venv  # noqa: F401

        # Without its bundled wheels (how Debian ships it without python3-venv) ensurepip
        # imports, but cannot install pip.
        ensurepip.version()
    except (Exception, SystemExit) as err:
        return (f"the `venv` module with `ensurepip` is needed to install componentize-py, "
                f"and {sys.executable} lacks it ({type(err).__name__}: {err}): {VENV_HINT}")
    return None


def ensure_tools() -> Path:
    """The componentize-py of our virtual environment, installed if missing or stale."""
    if tools_installed():
        return TOOL
    problem = venv_problem()
    if problem:
        sys.exit(fail(problem))
    import venv

    started = time.monotonic()
    say(f"installing the Python build tools into {VENV.relative_to(WORKSPACE)}")
    # A fresh environment: a changed interpreter leaves an old one unusable.
    try:
        venv.EnvBuilder(clear=True, with_pip=True).create(VENV)
    except (subprocess.CalledProcessError, OSError) as err:
        sys.exit(fail(f"failed to make the virtual environment {VENV} ({err}): {VENV_HINT}"))
    python = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--requirement", REQUIREMENTS],
        "install componentize-py",
    )
    STAMP.write_text(requirements_digest() + "\n")
    say(f"installed in {time.monotonic() - started:.1f}s")
    return TOOL


def build(tool: Path, name: str) -> None:
    source = HERE / name
    output = OUT / f"{name}.wasm"
    inputs = [*files(source), *files(SDK), *files(WIT), STAMP, Path(__file__)]
    if output.is_file() and output.stat().st_mtime >= max(p.stat().st_mtime for p in inputs):
        say(f"{name}: up to date ({output.relative_to(WORKSPACE)})")
        return
    started = time.monotonic()
    partial = output.with_suffix(".wasm.partial")
    # The handler's folder and the SDK are the whole Python path: componentize-py snapshots
    # every module the app imports at build time, and the component has no filesystem later.
    run(
        [tool, "--wit-path", WIT, "--world", WORLD, "--quiet", "componentize",
         "--python-path", source, "--python-path", SDK, "--output", partial, "app"],
        f"build the Python handler `{name}`",
        cwd=source,
    )
    os.replace(partial, output)
    size = output.stat().st_size / (1 << 20)
    say(f"{name}: built {output.relative_to(WORKSPACE)} ({size:.1f} MiB) "
        f"in {time.monotonic() - started:.1f}s")


def files(root: Path) -> list:
    """Every file under `root` that can change a component (not bytecode caches)."""
    return [
        p for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    ]


class locked:
    """An exclusive lock on `path` for the `with` block (advisory; a no-op without fcntl)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        self.file = open(self.path, "w")
        try:
            import fcntl
        except ImportError:  # Windows: builds are not serialised
            return self
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def run(command: list, what: str, cwd: Path = HERE) -> None:
    env = dict(os.environ)
    # componentize-py would add an active virtual environment's site-packages to the
    # component's Python path; the handler's imports must come from its own folders only.
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env)
    if result.returncode != 0:
        sys.exit(fail(f"failed to {what} (exit status {result.returncode})"))


def say(message: str) -> None:
    print(f"python handlers: {message}", file=sys.stderr, flush=True)


def fail(message: str) -> int:
    print(f"python handlers: error: {message}", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
