"""SSH between the nodes of a multi-node run, as dstack's `setupClusterSsh` gives it.

Each attempt of a multi-node run has a fresh ed25519 key pair (made by its supervisor). Every
node of the run starts the node's own `sshd` as the Ray worker's user, on a free port (dstack's
10022 when it is free), with the run key as its host key and as the only authorized key, and a
config of its own in the job's directory. The run's private home then gets `~/.ssh/dstack_job`,
`~/.ssh/config` (a block per node IP and a `node-<rank>` alias) and `~/.ssh/known_hosts`; since
OpenSSH reads the config from the passwd home, not `$HOME`, `ssh` and `scp` wrappers on the
job's PATH pass `-F ~/.ssh/config`, so `ssh <ip>` and `mpirun --hostfile $DSTACK_MPI_HOSTFILE`
work with no flags. The sshd runs under the guard, so it ends with the job or its node agent.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from pydantic import BaseModel

from dstack_ray.exec.process import DetachedJob

DSTACK_SSH_PORT = 10022
_SSHD_START_TIMEOUT = 10.0
_SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")


class RunKey(BaseModel):
    """The key pair of one attempt of a run (OpenSSH formats)."""

    private: str
    public: str

    def __repr__(self) -> str:  # never print the private key
        return f"RunKey(public={self.public!r})"

    __str__ = __repr__


def new_run_key(comment: str) -> RunKey:
    """A new Ed25519 key pair: with `cryptography` where the cluster's Python has it, else with
    `ssh-keygen` (which comes with the sshd a multi-node run needs anyway)."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    except ImportError:
        return _ssh_keygen(comment)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return RunKey(private=private, public=f"{public} {comment}")


def _ssh_keygen(comment: str) -> RunKey:
    keygen = shutil.which("ssh-keygen") or next((c for c in ("/usr/bin/ssh-keygen", "/usr/local/bin/ssh-keygen") if os.access(c, os.X_OK)), None)
    if keygen is None:
        raise OSError("cannot make the run's SSH key: this node has neither Python's `cryptography` nor `ssh-keygen` (install openssh-client)")
    with tempfile.TemporaryDirectory(prefix="dstack-key-") as scratch:
        key = Path(scratch) / "key"
        result = subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise OSError(f"ssh-keygen failed: {result.stderr.strip()[-200:]}")
        return RunKey(private=key.read_text(), public=(Path(scratch) / "key.pub").read_text().strip())


def find_sshd() -> Optional[str]:
    found = shutil.which("sshd")
    if found:
        return found
    return next((c for c in _SSHD_CANDIDATES if os.access(c, os.X_OK)), None)


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free TCP port for sshd")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _session_env(env: Dict[str, str]) -> List[str]:
    """The `SetEnv` line for SSH sessions: where the job lives (not the user's `env`, which may
    hold secrets, and nothing sshd's one-line syntax cannot carry). sshd uses only the first
    `SetEnv` line, so every variable goes on one."""
    names = ["HOME", "PATH", "VIRTUAL_ENV", "DSTACK_VENV_DIR"] + sorted(k for k in env if k.startswith("DSTACK_"))
    pairs = []
    for name in dict.fromkeys(names):
        value = env.get(name)
        if value is not None and not any(c in value for c in '\n"\\'):
            pairs.append(f'"{name}={value}"')
    return [f"SetEnv {' '.join(pairs)}"] if pairs else []


class NodeSshd:
    """The sshd of one job on its node."""

    def __init__(self, directory: Path, key: RunKey) -> None:
        self.directory = directory
        self.key = key
        self.port: Optional[int] = None
        self._process: Optional[DetachedJob] = None

    def start(self, session_env: Dict[str, str], watch_pid: Optional[int], view: Optional[dict] = None) -> Optional[int]:
        """Start sshd and return its port; None where the node has no sshd. It runs under a
        detached guard (like the job's command), so it outlives a restart of the node agent."""
        sshd = find_sshd()
        if sshd is None:
            return None
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        _write_private(self.directory / "host_key", self.key.private)
        _write_private(self.directory / "authorized_keys", self.key.public + "\n")
        if os.geteuid() == 0:
            # sshd started as root insists on its privilege-separation directory (an empty,
            # root-owned directory that the openssh-server package normally creates at boot).
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        last_error = "sshd did not start"
        for attempt in range(3):  # the chosen port may be taken before sshd binds it
            port = _free_port(DSTACK_SSH_PORT)
            config = self.directory / "sshd_config"
            _write_private(config, self._config(port, session_env))
            job_dir = self.directory / f"sshd-{attempt}"
            process = DetachedJob.start(job_dir, [sshd, "-D", "-e", "-f", str(config)], {"PATH": os.defpath}, str(self.directory), watch_pid=watch_pid, view=view)
            # Our own sshd says it listens (another one may hold the port: two ranks of a run on
            # one host can pick the same free port at the same moment, and only one binds it).
            listening = f"Server listening on 0.0.0.0 port {port}.".encode()
            output = job_dir / "output"
            deadline = time.monotonic() + _SSHD_START_TIMEOUT
            while time.monotonic() < deadline and not process.finished() and listening not in output.read_bytes():
                time.sleep(0.005)  # it listens ~6 ms after its start: every node of a gang start waits for this
            if not process.finished() and listening in output.read_bytes():
                self.port, self._process = port, process
                (self.directory / "sshd-job").write_text(job_dir.name)
                return port
            process.kill()
            process.wait()
            last_error = output.read_bytes().decode(errors="replace").strip() or last_error
        raise OSError(f"sshd failed to start: {last_error.splitlines()[-1]}")

    @classmethod
    def stop_started(cls, directory: Path) -> None:
        """Stop the sshd an earlier node agent started in `directory` (after a restart)."""
        try:
            process = DetachedJob.attach(directory / (directory / "sshd-job").read_text().strip())
        except OSError:
            return
        if process is not None and not process.finished():
            process.kill()
            process.wait()

    def _config(self, port: int, session_env: Dict[str, str]) -> str:
        lines = sshd_config(port, str(self.directory), allow_user=getpass.getuser())
        return "\n".join(lines + _session_env(session_env)) + "\n"

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


def sshd_config(port: int, directory: str, allow_user: Optional[str] = None) -> List[str]:
    """The sshd settings of a run: key-only, its own host key and authorized keys in
    `directory` (as sshd sees it), nothing read from the system's sshd config."""
    return [
        f"Port {port}",
        "ListenAddress 0.0.0.0",
        f"HostKey {directory}/host_key",
        f"AuthorizedKeysFile {directory}/authorized_keys",
        f"PidFile {directory}/sshd.pid",
        *([f"AllowUsers {allow_user}"] if allow_user else []),
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        "PrintMotd no",
        "AcceptEnv LANG LC_*",
    ]


def forget_keys(home: Path, sshd_dir: Path) -> None:
    """Remove the run key from the node once the job ended (config and known_hosts stay)."""
    for path in (home / ".ssh" / "dstack_job", home / ".ssh" / "dstack_job.pub", sshd_dir / "host_key", sshd_dir / "authorized_keys"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def write_client_files(
    home: Path,
    key: RunKey,
    ips: Sequence[str],
    ports: Sequence[Optional[int]],
    *,
    seen_home: Optional[str] = None,
    user: Optional[str] = None,
) -> None:
    """`~/.ssh/dstack_job`, `config` and `known_hosts` in the run's home for every node.
    `seen_home`/`user`: the home and user as the commands see them (inside a container)."""
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(ssh_dir, 0o700)
    _write_private(ssh_dir / "dstack_job", key.private)
    _write_private(ssh_dir / "dstack_job.pub", key.public + "\n")
    visible = Path(seen_home or home) / ".ssh"  # the directory as the commands see it
    identity = visible / "dstack_job"
    host_key = " ".join(key.public.split()[:2])
    user = user or getpass.getuser()
    blocks: List[str] = []
    known: List[str] = []
    seen: set = set()
    for rank, (ip, port) in enumerate(zip(ips, ports)):
        if not ip or port is None:
            continue
        names = [f"node-{rank}"] + ([ip] if ip not in seen else [])
        seen.add(ip)
        blocks.append(
            f"Host {' '.join(names)}\n"
            f"    HostName {ip}\n"
            f"    Port {port}\n"
            f"    User {user}\n"
            f"    IdentityFile {identity}\n"
            "    IdentitiesOnly yes\n"
            "    StrictHostKeyChecking yes\n"
            f"    UserKnownHostsFile {visible / 'known_hosts'}\n"
            "    LogLevel ERROR\n"
        )
        known.append(f"[{ip}]:{port} {host_key}")
    _write_private(ssh_dir / "config", "\n".join(blocks))
    _write_private(ssh_dir / "known_hosts", "\n".join(dict.fromkeys(known)) + "\n")


def write_wrappers(bin_dir: Path, home: Path) -> None:
    """`ssh` and `scp` on the job's PATH that read the run's `~/.ssh/config`."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("ssh", "scp"):
        real = shutil.which(tool, path=os.defpath + ":/usr/bin:/bin")
        if real is None:
            continue
        script = f"#!/bin/sh\nexec {shlex.quote(real)} -F {shlex.quote(str(home / '.ssh' / 'config'))} \"$@\"\n"
        path = bin_dir / tool
        path.write_text(script)
        os.chmod(path, 0o755)


# -- in a container (host networking): the image's own sshd, started before the command -----------

CONTAINER_SSH_DIR = "/dstack/ssh"
_SSHD_LAUNCHER = (
    'S=$(command -v sshd || { [ -x /usr/sbin/sshd ] && echo /usr/sbin/sshd; }); '
    f'if [ -n "$S" ]; then mkdir -p /run/sshd; "$S" -f {CONTAINER_SSH_DIR}/sshd_config >/dev/null 2>&1; fi; '
    'exec "$@"'
)
HAS_SSHD_CHECK = "command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]"


def free_port() -> int:
    """A port for the run's sshd inside a container (host networking: a free port of the node)."""
    return _free_port(DSTACK_SSH_PORT)


def stage_container_sshd(staging: Path, key: RunKey, port: int) -> None:
    """The sshd config, host key and authorized key at /dstack/ssh in the container's files."""
    directory = staging / CONTAINER_SSH_DIR.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(directory / "host_key", key.private)
    _write_private(directory / "authorized_keys", key.public + "\n")
    _write_private(directory / "sshd_config", "\n".join(sshd_config(port, CONTAINER_SSH_DIR)) + "\n")


def with_sshd(argv: Sequence[str]) -> List[str]:
    """`argv` started by /bin/sh after the image's sshd (the shell `exec`s it: signals and the
    exit status are the command's)."""
    return ["/bin/sh", "-c", _SSHD_LAUNCHER, "dstack-sshd", *argv]
