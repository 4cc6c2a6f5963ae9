#!/usr/bin/env bash
# Installs what Tartarus needs on Debian 12, idempotently: the apt packages (runtimes and
# image tools) and the project's virtual environment. Safe to run again; fast when done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  crun runc runsc            # OCI runtimes (runsc = gVisor)
  umoci skopeo debootstrap   # images: OCI unpack/convert, Debian rootfs builds
  busybox-static             # runtime probes and test images
  iproute2 procps util-linux # netns for tests, ps/pkill, unshare/mount
  python3 python3-venv ca-certificates
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: must run as root (sandboxes need namespaces, cgroups and mounts)" >&2
  exit 1
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing apt packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: Python >= 3.11 is required (found $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
stamp_src=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.stamp 2>/dev/null)" != "$stamp_src" ]; then
  echo "setup: creating the virtual environment (.venv)"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -U pip
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  echo "$stamp_src" > .venv/.stamp
fi
