#!/usr/bin/env bash
# Debian packages, installed only when asked for and missing:
#
#   scripts/install_system.sh [--sudo] PACKAGE...
#
#   dataset-fashion-mnist  Fashion-MNIST in /usr/share/datasets/fashion-mnist: the embedded demo's data. `make sweep`
#                          asks for it only when the study reads it from there and it is missing
#                          (python -m cluster.system_packages); FASHION_MNIST_DIR points elsewhere instead.
#   chromium               the report screenshot test (`make test`)
#
# Nothing missing: nothing is called. As root: apt-get. Not root, with --sudo (the set-up commands `make demo` and
# `make test`): sudo apt-get. Otherwise (a cluster login node): one line naming the package and the other way to
# provide the files, exit code 2; apt and sudo are never called.
set -euo pipefail
FMNIST=/usr/share/datasets/fashion-mnist
SUDO_OK=0
[ "${1:-}" = --sudo ] && { SUDO_OK=1; shift; }

need=()
for pkg in "$@"; do
  case "$pkg" in
    dataset-fashion-mnist)
      for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
        [ -f "$FMNIST/$f" ] || { need+=("$pkg"); break; }
      done ;;
    chromium) command -v chromium >/dev/null 2>&1 || need+=(chromium) ;;
    *) dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg") ;;
  esac
done
[ ${#need[@]} -eq 0 ] && exit 0

what="missing Debian package(s) ${need[*]}"
alt=""
for pkg in "${need[@]}"; do
  [ "$pkg" = dataset-fashion-mnist ] &&
    alt=", or set FASHION_MNIST_DIR to a folder with Fashion-MNIST's four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)"
done
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if [ $SUDO_OK = 1 ] && command -v sudo >/dev/null 2>&1; then
    SUDO=sudo
  else
    echo "error: $what, and installing needs root: have an administrator run apt-get install ${need[*]}$alt" >&2
    exit 2
  fi
fi
command -v apt-get >/dev/null 2>&1 || { echo "error: $what, and this machine has no apt-get$alt" >&2; exit 2; }
echo "installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
