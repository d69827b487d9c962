#!/usr/bin/env bash
# The working tree plus the one-call carry of scripts/gpu_check.sh is at the device tool's
# 64 MiB limit. `hold` moves what no device script reads (older bundled model versions, a
# committed checkpoint) into build/device-hold for the calls; `restore` puts it back.
#   bash scripts/device_tree.sh hold; <device calls>; bash scripts/device_tree.sh restore
set -euo pipefail
cd "$(dirname "$0")/.."
held=build/device-hold
paths=(models/stb1/1 models/stb1/3 benchmarks/results/zoo-1800-trunk.pt)
case "${1:-}" in
  hold)
    for p in "${paths[@]}"; do
      if [ -e "$p" ]; then mkdir -p "$held/$(dirname "$p")" && mv "$p" "$held/$p"; fi
    done
    ;;
  restore)
    for p in "${paths[@]}"; do
      if [ -e "$held/$p" ]; then mkdir -p "$(dirname "$p")" && mv "$held/$p" "$p"; fi
    done
    git status --short -- "${paths[@]}"
    ;;
  *) echo "usage: $0 hold|restore" >&2; exit 2 ;;
esac
