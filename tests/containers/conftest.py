"""Container tasks with podman (runc, lowered ulimits: see reference/build-machine.md) on a
simulated 2-node cluster. Images are built here from busybox; no registry is reachable."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import simulated_cluster

IMAGE = "localhost/dstack-test-busybox:latest"
SSHD_IMAGE = "localhost/dstack-test-sshd:latest"
APPLETS = "sh echo cat ls env sleep id pwd printf mkdir test true false date hostname nc sed grep head tail sort df wc tr".split()



def _podman_works() -> bool:
    return shutil.which("podman") is not None and Path("/bin/busybox").exists()


@pytest.fixture(scope="package")
def podman_env(tmp_path_factory):
    if not _podman_works():
        pytest.skip("podman and busybox are not installed (scripts/install-system.sh installs them as root)")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n[engine]\nruntime = "runc"\n')
    os.environ["CONTAINERS_CONF"] = str(conf)  # before Ray starts: its workers inherit it
    rootfs = tmp_path_factory.mktemp("rootfs")
    rootfs.chmod(0o755)  # the image's `/` (docker keeps its mode: user 1000 must enter it)
    for directory in ("bin", "etc", "tmp", "root", "home/app", "opt/image-data"):
        (rootfs / directory).mkdir(parents=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\napp:x:1000:\n")
    (rootfs / "opt" / "image-data" / "kept.txt").write_text("from the image\n")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(
        ["podman", "import", "--change", "ENV PATH=/bin", "--change", "ENV IMAGE_VAR=from-image",
         "--change", 'CMD ["/bin/sh", "-c", "echo image default command"]', "-", IMAGE],
        stdin=tar.stdout, check=True, capture_output=True,
    )
    tar.wait()
    _add_openssh(rootfs)
    _import(rootfs, SSHD_IMAGE)
    dockerd = _start_dockerd(tmp_path_factory.mktemp("docker"), rootfs)
    try:
        yield os.environ["CONTAINERS_CONF"]
    finally:
        _stop_dockerd(dockerd)
        subprocess.run("podman ps -aq --filter name=dstack- | xargs -r podman rm -f", shell=True, capture_output=True)


def _add_openssh(rootfs: Path) -> None:
    """This machine's sshd and ssh with the libraries they load, and the privilege-separation
    user sshd wants: an image with OpenSSH, built without a registry."""
    binaries = ["/usr/sbin/sshd", "/usr/bin/ssh"]
    libraries = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
        libraries |= {part for line in out.splitlines() for part in line.split() if part.startswith("/")}
    for path in binaries + sorted(libraries):
        target = rootfs / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)  # follows symlinks: the library itself under its soname
    (rootfs / "bin" / "ssh").symlink_to("/usr/bin/ssh")
    with open(rootfs / "etc" / "passwd", "a") as f:
        f.write("sshd:x:100:65534::/run/sshd:/bin/false\n")
    with open(rootfs / "etc" / "group", "a") as f:
        f.write("nogroup:x:65534:\n")


def _start_dockerd(root: Path, rootfs: Path):
    """A private docker daemon (its own socket, data and exec roots, no network set-up) with the
    busybox image, for the docker runtime tests; DOCKER_HOST points the docker CLI at it."""
    if shutil.which("dockerd") is None:
        return None  # the docker test says what is missing
    socket = root / "docker.sock"
    log = open(root / "dockerd.log", "wb")
    process = subprocess.Popen(
        ["dockerd", "--host", f"unix://{socket}", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
         "--pidfile", str(root / "dockerd.pid"), "--iptables=false", "--ip6tables=false", "--bridge=none",
         "--storage-driver=vfs", "--exec-opt", "native.cgroupdriver=cgroupfs",
         "--default-ulimit", "nofile=20000:20000", "--default-ulimit", "nproc=32768:32768"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    os.environ["DOCKER_HOST"] = f"unix://{socket}"  # before Ray starts: its workers inherit it
    for _ in range(150):
        if subprocess.run(["docker", "version"], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["docker", "import", "--change", "ENV PATH=/bin", "-", IMAGE], stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()
    return process, root


def _stop_dockerd(dockerd) -> None:
    if dockerd is None:
        return
    process, root = dockerd
    subprocess.run("docker ps -aq | xargs -r docker rm -f", shell=True, capture_output=True)
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    os.environ.pop("DOCKER_HOST", None)
    subprocess.run(["umount", "-l", str(root / "exec" / "netns" / "default")], capture_output=True)


def _import(rootfs: Path, image: str) -> None:
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["podman", "import", "--change", "ENV PATH=/bin", "-", image], stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()


@pytest.fixture(scope="package")
def cluster(podman_env):
    yield from simulated_cluster(2, num_cpus=1, object_store_memory=80 * 1024**2)


@pytest.fixture(scope="package")
def settings(tmp_path_factory):
    from dstack_ray.runtime.settings import RuntimeSettings

    return RuntimeSettings(
        state_dir=str(tmp_path_factory.mktemp("state")), stop_grace_seconds=2, retry_delays=[0.5], python_downloads=False
    )


@pytest.fixture(scope="package")
def client(cluster, settings):
    from dstack_ray import Client

    return Client(settings=settings)
