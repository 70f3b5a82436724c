"""The job's own Python (dstack's base image venv) and `nvcc:` for tasks that run on the host.

dstack's base image gives every job a fresh virtual environment with the requested Python; on
a Ray node we give each host-mode job one of its own in the job's directory, made with uv (where the
node has it; else with the standard library's `venv`) and seeded with pip, so that `pip install`
never reaches the environment Ray and dstack-ray run from.

Creating one with uv costs about 0.3 s of CPU (mostly installing pip), so each node makes it
once per Python version (a template in the state directory) and gives jobs copies of it. pip is
500 of the template's 530 files and most jobs never run it, so a copy gets pip's metadata and a
small stand-in package `pip` instead: the first `pip`, `python -m pip` or `import pip` in the job
copies the real files in from the template (under a lock), then runs them — a copy costs ~30
file operations instead of ~600, and its removal after the job as few. Every file is a copy,
never a hard link: jobs run as the node's user (often root), so a job writing into a linked
file in place would change the template and every later job's Python. One spare copy per
version waits, made in the background after a job took the previous one: a job takes it with one
rename (atomic, so two agents on the node never get the same one). Virtual environments are made
`--relocatable` so a renamed or copied one still works.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

VENV_TIMEOUT = 300
SPARES_PER_VERSION = 1
PROMPT = "workflow"
_STALE_SCRATCH_S = 3600

# The stand-in `pip/__init__.py` of a job's venv. `{source}` is the template's pip package.
LAZY_PIP = '''"""Stand-in for pip (dstack-ray): copies the real pip in from {source} on first use."""
import fcntl
import importlib
import os
import shutil

_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCE = {source!r}


def _link_in():
    lock = os.open(os.path.join(os.path.dirname(_HERE), ".dstack-pip.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(_HERE, "__main__.py")):
            return  # another process of the job did it
        if not os.path.isfile(os.path.join(_SOURCE, "__main__.py")):
            raise ImportError("pip's files are gone from " + _SOURCE + "; run `uv pip install pip` in the job")
        last = []
        for root, dirs, files in os.walk(_SOURCE):
            relative = os.path.relpath(root, _SOURCE)
            target = os.path.normpath(os.path.join(_HERE, relative))
            os.makedirs(target, exist_ok=True)
            for name in files:
                if relative == "." and name in ("__init__.py", "__main__.py"):
                    last.append(name)
                    continue
                destination = os.path.join(target, name)
                if not os.path.exists(destination):
                    shutil.copy2(os.path.join(root, name), destination)  # a copy: never the template's file
        for name in sorted(last):  # __init__.py, then __main__.py: the mark that it is done
            scratch = os.path.join(_HERE, name + ".dstack-tmp")
            shutil.copy2(os.path.join(_SOURCE, name), scratch)
            os.replace(scratch, os.path.join(_HERE, name))
    finally:
        os.close(lock)


_link_in()
importlib.invalidate_caches()
with open(__file__) as _real:
    exec(compile(_real.read(), __file__, "exec"))
'''


class EnvironmentSetupError(Exception):
    """The node cannot provide what the task asks for; the message says what to install."""


def find_uv() -> Optional[str]:
    """The uv of dstack-ray's `uv` dependency, else one on PATH; None where the node has
    neither (a cluster with only Ray: job venvs are then made with `python -m venv`)."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


# The first lines of a script in a venv made relocatable: /bin/sh runs the venv's python next to
# the script, which reads the rest as Python (the shell's lines are a string to it), as uv does.
_RELOCATABLE_SHEBANG = (
    "#!/bin/sh\n"
    """'''exec' "$(dirname -- "$(realpath -- "$0")")"/'python' "$0" "$@"\n"""
    "' '''\n"
)
_RELOCATABLE_ACTIVATE = 'VIRTUAL_ENV="$(cd -- "$(dirname -- "${BASH_SOURCE[0]:-$0}")/.." > /dev/null && pwd)"'


def make_relocatable(venv: Path) -> None:
    """Scripts and `activate` of a `python -m venv` venv that name their own directory instead
    of the path the venv was made at (so a copy or a renamed spare installs into itself)."""
    marker = str(venv)
    for script in (venv / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        try:
            text = script.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # a binary
        lines = text.split("\n")
        if script.name == "activate":
            lines = [_RELOCATABLE_ACTIVATE if line.startswith("VIRTUAL_ENV=") else line for line in lines]
            script.write_text("\n".join(lines))
        elif lines[0].startswith("#!") and marker in lines[0]:
            script.write_text(_RELOCATABLE_SHEBANG + "\n".join(lines[1:]))
        elif lines[0] == "#!/bin/sh" and len(lines) > 2 and marker in lines[1]:  # pip's form for a long path:
            script.write_text(_RELOCATABLE_SHEBANG + "\n".join(lines[3:]))  # sh runs the python its 2nd line names


def _runs_as(candidate: str, version: str) -> bool:
    """Whether `candidate` runs and is Python `version` (pyenv's shims for versions that are not
    selected exit 127; a `python3` may be another minor version)."""
    try:
        result = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and result.stdout.strip() == version


def python_candidates(version: str, managed: Sequence[Path] = ()) -> List[str]:
    """Where an installed Python `version` ("3.12") may be, in the order they are tried: PATH,
    pyenv's installed versions (past its shims), the system's and /usr/local's, uv-managed ones
    (`managed` directories, and uv's default under ~/.local/share/uv/python)."""
    name = f"python{version}"
    found = [os.path.join(d, name) for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d]
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    patterns = [(pyenv_root / "versions", f"{version}*/bin/{name}")]
    for root in [*managed, Path.home() / ".local" / "share" / "uv" / "python"]:
        patterns.append((root, f"cpython-{version}.*/bin/{name}"))
    for root, pattern in patterns:
        found += [str(p) for p in sorted(root.glob(pattern), key=lambda p: _patch_of(p.parts[-3]), reverse=True)]
    found += [f"/usr/bin/{name}", f"/usr/local/bin/{name}"]
    unique: List[str] = []
    for candidate in found:
        if candidate not in unique and os.access(candidate, os.X_OK):
            unique.append(candidate)
    return unique


def _patch_of(directory: str) -> Tuple[int, ...]:
    """`3.12.4` or `cpython-3.12.4-linux-x86_64-gnu` -> (3, 12, 4): the newest patch release first."""
    numbers = directory.split("-")[1] if directory.startswith("cpython-") else directory
    return tuple(int(part) for part in numbers.split(".") if part.isdigit())


def find_python(version: str, managed: Sequence[Path] = ()) -> Tuple[Optional[str], List[str]]:
    """The first installed Python `version` that runs, and every candidate tried before it."""
    tried: List[str] = []
    for candidate in python_candidates(version, managed):
        if _runs_as(candidate, version):
            return candidate, tried
        tried.append(candidate)
    return None, tried


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "failed"


def _bundled_pip(python: Path) -> Optional[Path]:
    """The pip wheel the interpreter ships for ensurepip (no network needed to seed with it)."""
    try:
        out = subprocess.run(
            [str(python), "-c", "import ensurepip, os; print(os.path.dirname(ensurepip.__file__))"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    bundled = Path(out.stdout.strip() or "/nonexistent") / "_bundled"
    wheels = sorted(bundled.glob("pip-*.whl")) if out.returncode == 0 else []
    return wheels[-1] if wheels else None


class VenvMaker:
    """Makes virtual environments with uv under a node's state directory.

    `root` holds uv's cache, the Pythons uv downloads (when `downloads` allows it) and the
    spares. `version` None means the Python that runs Ray on this node.
    """

    def __init__(self, root: Path, downloads: bool = True) -> None:
        self.root = root
        self.downloads = downloads
        self._refilling: Dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def _uv_env(self, downloads: bool) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env["UV_CACHE_DIR"] = str(self.root / "uv-cache")
        env["UV_PYTHON_INSTALL_DIR"] = str(self.root / "python")
        env["UV_PYTHON_DOWNLOADS"] = "automatic" if downloads else "never"
        env["UV_NO_CONFIG"] = "1"  # the node's uv.toml is not the task's
        return env

    def create(self, version: Optional[str], target: Path, node: str) -> Path:
        """A fresh virtual environment with Python `version` (with pip) at `target`."""
        uv = find_uv()
        if uv is None:
            return self._create_without_uv(version, target, node)
        python = version or sys.executable
        tried: List[str] = []
        if version:
            # An installed interpreter found here first: uv's own search stops at the first
            # `python3.X` on PATH, even a pyenv shim that cannot run it.
            installed, failed = find_python(version, [self.root / "python"])
            python = installed or version
            if failed:
                tried.append("not runnable: " + ", ".join(failed))
        attempts = [False, True] if version and self.downloads else [False]
        for downloads in attempts:
            result = subprocess.run(
                [uv, "venv", "--quiet", "--relocatable", "--prompt", PROMPT, "--python", python, str(target)],
                capture_output=True, text=True, timeout=VENV_TIMEOUT, env=self._uv_env(downloads),
            )
            if result.returncode == 0:
                break
            shutil.rmtree(target, ignore_errors=True)
            tried.append(("uv (download allowed): " if downloads else "uv (installed Pythons): ") + _last_line(result.stderr))
        else:
            if not self.downloads and version:
                tried.append("downloads are off on this cluster")
            raise EnvironmentSetupError(
                f"Python {version or python} is not available on node {node} ({'; '.join(tried)});"
                f" install python{version or ''} there, let the node download it, or use an `image` with it"
            )
        self._seed_pip(uv, target, node)
        return target

    def _create_without_uv(self, version: Optional[str], target: Path, node: str) -> Path:
        """The same with the standard library's `venv` (pip from the interpreter's ensurepip):
        ~3 s of CPU instead of ~0.3, once per node and version (jobs get copies)."""
        python, failed = find_python(version, [self.root / "python"]) if version else (sys.executable, [])
        if python is None:
            tried = f" (tried: {', '.join(failed)})" if failed else " (none installed on PATH, pyenv or /usr)"
            raise EnvironmentSetupError(
                f"Python {version} is not available on node {node}: it has no uv to fetch it and no"
                f" runnable python{version}{tried}; install uv or python{version} there, or use an `image` with it"
            )
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        result = subprocess.run(
            [python, "-m", "venv", "--prompt", PROMPT, str(target)], capture_output=True, text=True, timeout=VENV_TIMEOUT, env=env
        )
        if result.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            raise EnvironmentSetupError(
                f"cannot make the job's Python environment on node {node} with `{python} -m venv` (the node has no uv):"
                f" {_last_line(result.stderr or result.stdout)}; install uv, or the venv module (python3-venv), there"
            )
        make_relocatable(target)
        return target

    def _seed_pip(self, uv: str, venv: Path, node: str) -> None:
        """pip in the venv, from the interpreter's own bundled wheel when it has one (offline),
        else from the package index; without pip a task's `pip` would be the node's."""
        python = venv / "bin" / "python"
        wheel = _bundled_pip(python)
        if wheel is not None:
            args = [uv, "pip", "install", "--quiet", "--offline", "--no-deps", "--python", str(python), str(wheel)]
        else:
            args = [uv, "pip", "install", "--quiet", "--python", str(python), "pip"]
        result = subprocess.run(args, capture_output=True, text=True, timeout=VENV_TIMEOUT, env=self._uv_env(False))
        if result.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise EnvironmentSetupError(f"cannot install pip into the job's environment on node {node}: {_last_line(result.stderr)}")

    # -- spares ---------------------------------------------------------------------------------

    def _spares(self, version: Optional[str]) -> Path:
        return self.root / "spares" / (version or f"worker-{sys.version_info[0]}.{sys.version_info[1]}")

    def take(self, version: Optional[str], target: Path, node: str) -> Path:
        """Move a spare to `target` (or make one there), then make the next spare."""
        spares = self._spares(version)
        taken = False
        for spare in sorted(spares.glob("ready-*")) if spares.is_dir() else []:
            try:
                os.rename(spare, target)
            except OSError:
                continue  # another agent on this node took it first
            if (target / "bin" / "python").exists():  # its interpreter is still installed
                taken = True
                break
            shutil.rmtree(target, ignore_errors=True)
        if not taken:
            self._copy_template(version, target, node)
        self._refill(version, node)
        return target

    def _template(self, version: Optional[str], node: str) -> Path:
        """The node's pristine venv for `version`, made once; jobs get copies of it."""
        template = self._spares(version).parent.parent / "templates" / self._spares(version).name
        if (template / "bin" / "python").exists():
            return template
        template.parent.mkdir(parents=True, exist_ok=True)
        scratch = template.parent / f"making-{uuid.uuid4().hex}"
        self.create(version, scratch, node)
        shutil.rmtree(template, ignore_errors=True)  # one whose interpreter went away
        try:
            os.rename(scratch, template)
        except OSError:  # another agent made it at the same moment
            shutil.rmtree(scratch, ignore_errors=True)
        return template

    def _copy_template(self, version: Optional[str], target: Path, node: str) -> None:
        """A copy of the template at `target` (every file copied, none linked: what a job writes
        stays in its own venv), except pip's package, which is copied in on first use
        (LAZY_PIP)."""
        template = self._template(version, node)
        pip_packages = list((template / "lib").glob("python*/site-packages/pip"))
        holding_pip = {str(package.parent) for package in pip_packages}

        def copy(source: str, destination: str) -> None:  # (once per file of every job's venv: kept cheap)
            shutil.copyfile(source, destination)
            shutil.copymode(source, destination)

        def without_pip(directory: str, names: List[str]) -> List[str]:
            return ["pip"] if str(directory) in holding_pip else []

        try:
            shutil.copytree(template, target, symlinks=True, copy_function=copy, ignore=without_pip)
            for package in pip_packages:
                stand_in = target / package.relative_to(template)
                stand_in.mkdir()
                (stand_in / "__init__.py").write_text(LAZY_PIP.format(source=str(package)))
        except (OSError, shutil.Error):
            shutil.rmtree(target, ignore_errors=True)
            self.create(version, target, node)  # the copy failed (a full disk?): make it instead

    def _refill(self, version: Optional[str], node: str) -> None:
        key = version or ""
        with self._lock:
            running = self._refilling.get(key)
            if running is not None and running.is_alive():
                return
            thread = threading.Thread(target=self._make_spare, args=(version, node), name="dstack-venv-spare", daemon=True)
            self._refilling[key] = thread
            thread.start()

    def _make_spare(self, version: Optional[str], node: str) -> None:
        spares = self._spares(version)
        try:
            spares.mkdir(parents=True, exist_ok=True)
            self._remove_stale_scratch(spares)
            if len(list(spares.glob("ready-*"))) >= SPARES_PER_VERSION:
                return
            scratch = spares / f"making-{uuid.uuid4().hex}"
            self._copy_template(version, scratch, node)
            os.rename(scratch, spares / f"ready-{time.time_ns()}-{uuid.uuid4().hex[:8]}")
        except (OSError, subprocess.SubprocessError, EnvironmentSetupError) as e:
            logger.warning("cannot prepare a spare Python environment: %s", e)

    @staticmethod
    def _remove_stale_scratch(spares: Path) -> None:
        for scratch in spares.glob("making-*"):
            try:
                if time.time() - scratch.stat().st_mtime > _STALE_SCRATCH_S:
                    shutil.rmtree(scratch, ignore_errors=True)
            except OSError:
                pass


_MAKERS: Dict[Tuple[str, bool], VenvMaker] = {}


def venv_maker(root: Path, downloads: bool) -> VenvMaker:
    """One maker per state directory in this worker process (its spares are refilled once)."""
    key = (str(root), downloads)
    if key not in _MAKERS:
        _MAKERS[key] = VenvMaker(root, downloads)
    return _MAKERS[key]


def link_uv(bin_dir: Path) -> None:
    """`uv` on the job's PATH, as in dstack's base image (`uv pip install` then installs into
    the job's activated venv)."""
    uv = find_uv()
    if uv is None:  # a node without uv: the job has none either (README: existing clusters)
        return
    bin_dir.mkdir(parents=True, exist_ok=True)
    link = bin_dir / "uv"
    if not link.exists():
        link.symlink_to(uv)


def activation_env(venv: Path, path: str) -> Dict[str, str]:
    """What `. venv/bin/activate` exports, for commands and entrypoints alike."""
    return {
        "VIRTUAL_ENV": str(venv),
        "VIRTUAL_ENV_PROMPT": PROMPT,
        "PATH": f"{venv}/bin:{path}" if path else f"{venv}/bin",
        "DSTACK_VENV_DIR": str(venv),
    }


def find_nvcc(node: str, path: Optional[str] = None) -> Tuple[Path, str]:
    """The CUDA compiler and its version line, or EnvironmentSetupError."""
    candidates = [shutil.which("nvcc", path=path), "/usr/local/cuda/bin/nvcc"]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            try:
                out = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                continue
            lines = [line for line in out.stdout.splitlines() if line.strip()]
            return Path(candidate), (lines[-1] if lines else "unknown version")
    raise EnvironmentSetupError(
        f"`nvcc: true` needs the CUDA compiler, but node {node} has no nvcc on PATH or in"
        " /usr/local/cuda/bin; install the CUDA toolkit there, or use an `image` with it"
    )
