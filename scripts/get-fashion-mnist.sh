#!/usr/bin/env bash
# Make real Fashion-MNIST available offline: Debian's dataset-fashion-mnist package where apt exists.
# Exits 0 when the data is (now) there, 1 with instructions otherwise.
set -uo pipefail
dir=/usr/share/datasets/fashion-mnist
have() { [ -f "${TOOLKIT_FASHION_MNIST:-$dir}/train-images-idx3-ubyte.gz" ] || [ -f "${TOOLKIT_FASHION_MNIST:-$dir}/train-images-idx3-ubyte" ]; }
have && exit 0
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  echo "installing Fashion-MNIST with apt-get (package dataset-fashion-mnist) ..." >&2
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1
fi
have && exit 0
cat >&2 <<MSG
Fashion-MNIST was not found in $dir.
Provide it in one of these ways:
  - apt-get install dataset-fashion-mnist            (Debian/Ubuntu)
  - put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and
    t10k-labels-idx1-ubyte.gz in a folder and export TOOLKIT_FASHION_MNIST=/that/folder
  - with internet: add 'download: true' to data.train and data.test in the recipe
MSG
exit 1
