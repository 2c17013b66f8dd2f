#!/usr/bin/env bash
# The working tree that travels to a lent GPU machine may be at most 64 MiB with what it carries;
# the tracked tree is ~78 MB, mostly the peer models' weights, which a cycle of medsegrwkv-t does
# not need. `out` takes those out of the git index (and hides them from git in .git/info/exclude),
# `back` puts them back. The files themselves never move. Usage: bash recipes/gpu_carry_tree.sh out|back
set -euo pipefail
cd "$(dirname "$0")/.."
models=backend/medsegrwkv/weights/models
case "${1:-}" in
  out)
    peers=$(git ls-files "$models/*/model.safetensors" | grep -v "^$models/medsegrwkv-t/" || true)
    [ -n "$peers" ] || { echo "the peer weights are already out of the index"; exit 0; }
    git rm -q --cached $peers
    printf '/%s\n' $peers >> .git/info/exclude
    echo "took $(echo "$peers" | wc -l) peer weights out of the index; tracked tree now" \
      "$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes. Put them back with: $0 back"
    ;;
  back)
    peers=$(grep "^/$models/.*/model.safetensors$" .git/info/exclude | cut -c2- || true)
    [ -n "$peers" ] || { echo "nothing to put back"; exit 0; }
    git reset -q -- $peers
    sed -i "\|^/$models/.*/model.safetensors$|d" .git/info/exclude
    echo "put $(echo "$peers" | wc -l) peer weights back in the index"
    ;;
  *) echo "usage: bash recipes/gpu_carry_tree.sh out|back" >&2; exit 2 ;;
esac
