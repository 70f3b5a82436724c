#!/usr/bin/env bash
# System packages the container tests use: podman with runc, and busybox for a local image.
# Needs root and apt (Debian/Ubuntu); elsewhere it says what is missing and goes on.
set -euo pipefail
needed=()
command -v podman >/dev/null 2>&1 || needed+=(podman)
command -v runc >/dev/null 2>&1 || needed+=(runc)
[ -x /bin/busybox ] || needed+=(busybox-static)
command -v git >/dev/null 2>&1 || needed+=(git)
if [ ${#needed[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: not installing ${needed[*]} (needs root and apt); the container tests will be skipped" >&2
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${needed[@]}" >/dev/null
