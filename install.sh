#!/usr/bin/env bash
# Installs sqcc from scratch: the Debian packages in packages.apt (compilers, cross compilers, qemu),
# then a virtual environment .venv with sqcc editable and its pinned Python dependencies.
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2046
$SUDO apt-get install -y -q --no-install-recommends $(grep -v '^#' packages.apt)
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'
echo "installed; now: . .venv/bin/activate"
