#!/usr/bin/env bash
# `make token ROLE=... [ORG=...]`: a token for the local stack's signing key.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f .stack/jwt.key ] || { echo "run make up first" >&2; exit 1; }
[ -x "${BUILD_DIR:-build}/tools/connecting-token" ] || { echo "run make up (or make build) first" >&2; exit 1; }
AUTH_JWT_KEY=$(cat .stack/jwt.key) "${BUILD_DIR:-build}/tools/connecting-token" "$@"
