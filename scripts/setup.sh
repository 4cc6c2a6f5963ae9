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
  nftables                   # Styx: sandboxes' egress rules (allowlist/open networks)
  strace                     # seccomp generate: traces a command's syscalls
  libseccomp2                # microvm: profiles compiled to BPF for the guest's init
  qemu-system-x86 e2fsprogs  # microvm: QEMU's microvm machine, ext4 guest disks
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
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev,bench]'
  echo "$stamp_src" > .venv/.stamp
fi

# -- CRIU for runc checkpoint/restore (hibernation) --------------------------------------------
# Debian 12's criu 3.17 fails `criu check` on this kernel and trixie's .deb needs a newer glibc,
# so CRIU is built from trixie's source tarball (a private apt config: the system's sources stay
# untouched) into /opt/tartarus/criu, once (about a minute; later runs see the binary and skip).
# A failed build is not fatal: runc then reports checkpoint as unavailable, with the reason.
CRIU_VERSION=4.1.1
CRIU_PREFIX=${TARTARUS_CRIU_PREFIX:-/opt/tartarus/criu}
CRIU_BUILD_DEPS=(
  build-essential pkg-config libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler
  protobuf-compiler python3-protobuf libnl-3-dev libnet1-dev libcap-dev libnftables-dev
  libgnutls28-dev uuid-dev libaio-dev xz-utils
)
build_criu() {
  local work=/var/cache/tartarus/criu-src
  local apt_opts=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=$work/apt/none"
    -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache" -o "APT::Sandbox::User=root")
  local deps=() pkg
  for pkg in "${CRIU_BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || deps+=("$pkg")
  done
  if [ ${#deps[@]} -gt 0 ]; then
    echo "setup: installing CRIU build dependencies: ${deps[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${deps[@]}"
  fi
  mkdir -p "$work/apt/none" "$work/apt/lists/partial" "$work/apt/cache/archives/partial"
  echo 'deb-src http://deb.debian.org/debian trixie main' > "$work/apt/sources.list"
  local tarball="$work/criu_${CRIU_VERSION}.orig.tar.xz"
  if [ ! -f "$tarball" ]; then
    echo "setup: fetching the CRIU $CRIU_VERSION source (Debian trixie)"
    apt-get "${apt_opts[@]}" update -qq
    (cd "$work" && apt-get "${apt_opts[@]}" source --download-only -qq "criu" >/dev/null 2>&1) || true
    [ -f "$tarball" ] || { echo "setup: trixie does not offer criu_${CRIU_VERSION}.orig.tar.xz" >&2; return 1; }
  fi
  echo "setup: building CRIU $CRIU_VERSION into $CRIU_PREFIX"
  rm -rf "$work/criu-$CRIU_VERSION"
  tar -xJf "$tarball" -C "$work"
  make -s -C "$work/criu-$CRIU_VERSION" -j"$(nproc)" criu >"$work/build.log" 2>&1 \
    || { tail -n 20 "$work/build.log" >&2; return 1; }
  install -D -m 0755 "$work/criu-$CRIU_VERSION/criu/criu" "$CRIU_PREFIX/bin/criu"
  rm -rf "$work/criu-$CRIU_VERSION"
}
if ! "$CRIU_PREFIX/bin/criu" --version 2>/dev/null | grep -q "Version: $CRIU_VERSION$"; then
  build_criu || echo "setup: warning: CRIU was not built; runc cannot hibernate sandboxes" >&2
fi

# -- the microVM guest kernel --------------------------------------------------------------------
# Debian's cloud kernel, unpacked (not installed: it is the guests' kernel, not the host's) into
# /opt/tartarus/microvm/kernel: vmlinuz and the virtio/overlay modules the guests' initramfs
# loads (runtimes/microvm_image.py builds that initramfs). Once per kernel version.
MICROVM_DIR=${TARTARUS_MICROVM_PREFIX:-/opt/tartarus/microvm}
MICROVM_MODULES=(virtio_ring virtio virtio_mmio virtio_blk virtio_console overlay failover net_failover virtio_net)
install_guest_kernel() {
  local pkg work deb
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
  if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  fi
  [ -n "$pkg" ] || { echo "setup: no linux-image-cloud-amd64 in apt" >&2; return 1; }
  local stamp="$pkg ${MICROVM_MODULES[*]}"  # a module added later unpacks it again
  if [ "$(cat "$MICROVM_DIR/kernel/package" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  echo "setup: unpacking the microVM guest kernel ($pkg)"
  work=$(mktemp -d /var/cache/tartarus-kernel.XXXXXX)
  (cd "$work" && apt-get download -qq "$pkg" >/dev/null 2>&1) || { rm -rf "$work"; return 1; }
  deb=$(ls "$work"/*.deb)
  dpkg-deb -x "$deb" "$work/x"
  rm -rf "$MICROVM_DIR/kernel.new"
  mkdir -p "$MICROVM_DIR/kernel.new/modules"
  cp "$work"/x/boot/vmlinuz-* "$MICROVM_DIR/kernel.new/vmlinuz"
  local m
  for m in "${MICROVM_MODULES[@]}"; do
    find "$work/x/lib/modules" -name "$m.ko" -exec cp {} "$MICROVM_DIR/kernel.new/modules/" \;
    [ -f "$MICROVM_DIR/kernel.new/modules/$m.ko" ] || { echo "setup: $pkg lacks $m.ko" >&2; rm -rf "$work"; return 1; }
  done
  echo "$stamp" > "$MICROVM_DIR/kernel.new/package"
  rm -rf "$work" "$MICROVM_DIR/kernel"
  mv "$MICROVM_DIR/kernel.new" "$MICROVM_DIR/kernel"
}
install_guest_kernel || echo "setup: warning: no microVM guest kernel; the microvm runtime will not work" >&2
