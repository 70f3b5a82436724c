#!/usr/bin/env bash
# System packages the tests use: podman with runc and busybox for a local image (containers,
# and the separate hosts of tests/multihost), OpenSSH (server and client) for SSH between the
# nodes of a multi-node run, Open MPI for the MPI recipe, and docker.io (the tests start a
# private dockerd of their own; no system service is started here).
# Needs root and apt (Debian/Ubuntu); elsewhere it says what is missing and goes on.
set -euo pipefail
needed=()
command -v podman >/dev/null 2>&1 || needed+=(podman)
command -v runc >/dev/null 2>&1 || needed+=(runc)
[ -x /bin/busybox ] || needed+=(busybox-static)
command -v git >/dev/null 2>&1 || needed+=(git)
[ -x /usr/sbin/sshd ] || needed+=(openssh-server)
command -v ssh >/dev/null 2>&1 || needed+=(openssh-client)
command -v mpirun >/dev/null 2>&1 || needed+=(openmpi-bin)  # the MPI example across hosts
command -v tmux >/dev/null 2>&1 || needed+=(tmux)  # the terminal test of live output
command -v dockerd >/dev/null 2>&1 || needed+=(docker.io)  # the docker runtime tests start a private dockerd
if [ ${#needed[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: not installing ${needed[*]} (needs root and apt); the container tests will be skipped" >&2
  exit 0
fi
apt-get update -qq
# Install without starting any service (openssh-server would start a system sshd on port 22):
# dstack-ray starts its own sshd per run.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created_policy=1
fi
trap 'if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${needed[@]}" >/dev/null
