#!/bin/sh
# Install everything knetlink-harness needs on a fresh Debian 12 or Ubuntu machine:
# QEMU, busybox, build tools, bpftrace, kernels with matching headers, and a
# Python virtual environment (.venv) with the harness and its dependencies.
# Usage: scripts/setup.sh [--arch arm64]   (as root, or with sudo available)
#   --arch arm64: also what arm64 guests need (docs/kernels.md, "arm64 guests"): QEMU for arm64, the
#   cross compiler, mmdebstrap, and (python -m harness arch-setup arm64) the arm64 counterparts of the
#   installed kernels and an arm64 root file system in the harness cache.
set -eu
cd "$(dirname "$0")/.."

FOREIGN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) FOREIGN="${2:?--arch needs a value: arm64}"; shift 2 ;;
    --arch=*) FOREIGN="${1#--arch=}"; shift ;;
    *) echo "setup.sh: unknown argument '$1' (usage: scripts/setup.sh [--arch arm64])" >&2; exit 2 ;;
  esac
done
case "$FOREIGN" in
  ""|x86_64) FOREIGN="" ;;
  arm64) ;;
  *) echo "setup.sh: unsupported guest architecture '$FOREIGN' (supported: arm64)" >&2; exit 2 ;;
esac

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
# shellcheck source=/dev/null
. /etc/os-release

# The shellcheck package: actionlint runs it on the workflow's shell steps (tests/test_workflow.py).
PKGS="qemu-system-x86 busybox-static build-essential kmod bpftrace cpio zstd python3-venv shellcheck"
# Kernel builds (--kernel TREE, --kernel debug): the tools make needs; xz unpacks Debian's source.
PKGS="$PKGS flex bison bc libelf-dev libssl-dev xz-utils"
case "${ID:-}" in
  debian)
    # Debian 12: 6.1 from bookworm, 6.12 LTS from bookworm-security, each with headers.
    # linux-source-6.1: the tree `--kernel debug` builds (/usr/src/linux-source-6.1.tar.xz).
    PKGS="$PKGS linux-image-amd64 linux-headers-amd64 linux-image-6.12-amd64 linux-headers-6.12-amd64"
    PKGS="$PKGS linux-source-6.1" ;;
  ubuntu)
    # linux-source: the running series' tree for `--kernel debug` (/usr/src/linux-source-*/*.tar.bz2).
    PKGS="$PKGS linux-image-generic linux-headers-generic linux-source" ;;
  *)
    echo "setup.sh: unsupported distribution '${ID:-unknown}'; install the equivalent of: $PKGS" >&2
    exit 1 ;;
esac

if [ -n "$FOREIGN" ] && [ "${ID:-}" != debian ]; then
  # Ubuntu serves arm64 from another archive (ports.ubuntu.com) under other kernel package names.
  echo "setup.sh: --arch $FOREIGN needs Debian's archive (its $FOREIGN kernel packages and root); on ${ID:-this system} run it in a Debian 12 container, as the GitHub workflow's arm64 job does" >&2
  exit 2
fi
if [ -n "$FOREIGN" ]; then
  # The arm64 kernel packages are downloaded with apt-get download, which needs the architecture known to dpkg.
  PKGS="$PKGS qemu-system-arm gcc-aarch64-linux-gnu libc6-dev-arm64-cross mmdebstrap"
  $SUDO dpkg --add-architecture "$FOREIGN"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $PKGS

# Ubuntu installs kernel images readable by root only; QEMU run as a user must read them.
if [ "${ID:-}" = ubuntu ]; then $SUDO chmod 0644 /boot/vmlinuz-*; fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
if [ -n "$FOREIGN" ]; then .venv/bin/python -m harness arch-setup "$FOREIGN"; fi
.venv/bin/python -m harness doctor
