#!/usr/bin/env bash
# Fails when protos/ breaks compatibility with the last release (a git tag v*).
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null || true)
if [ -z "$tag" ]; then
  echo "buf breaking: no release tag yet (v*), nothing to compare against"
  exit 0
fi
node_modules/.bin/buf breaking protos --against ".git#tag=$tag,subdir=protos"
echo "buf breaking: compatible with $tag"
