#!/usr/bin/env bash
# The GPU check in one command (see bench/gpu.py for what it measures):
#   bash bench/gpu.sh [--wheels DIR] [--tiny] [bench/gpu.py flags...]
# On a bare machine with PyTorch and no network, --wheels DIR installs llt and what it
# needs from wheel files in DIR (pip --no-index); without it, llt must be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -n "${wheels:-}" ]; then
  pip install --no-index --find-links "$wheels" -e . >&2
fi
python bench/gpu.py "${args[@]}"
