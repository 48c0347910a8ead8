#!/usr/bin/env bash
# Installs what building and testing need, from Debian 12 packages and npm.
# Quick no-op when everything is present.
set -euo pipefail
cd "$(dirname "$0")/../.."

packages=(build-essential cmake pkg-config ccache git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libpq-dev postgresql nats-server libnats-dev libssl-dev openssl
  libgtest-dev libgmock-dev libbenchmark-dev libjwt-dev libcurl4-openssl-dev
  prometheus-cpp-dev)
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
# Node.js may come from elsewhere (NodeSource bundles npm); only ask Debian when absent.
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
if [ "${CONNECTING_SKIP_APT:-}" != 1 ]; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts a cluster on install; ours run in private directories instead.
    $sudo systemctl disable --now postgresql >/dev/null 2>&1 || true
  fi
fi
# promtool (the alert rules' unit tests) from Debian's prometheus package,
# unpacked rather than installed: installing would start a Prometheus server.
if [ "${CONNECTING_SKIP_APT:-}" != 1 ] && ! command -v promtool >/dev/null 2>&1 \
    && [ ! -x .tools/promtool ]; then
  echo "fetching promtool (Debian's prometheus package, unpacked into .tools/)"
  work=$(mktemp -d)
  if ! (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1); then
    $sudo apt-get update -qq
    (cd "$work" && apt-get download -qq prometheus >/dev/null)
  fi
  dpkg-deb -x "$work"/prometheus_*.deb "$work/unpacked"
  mkdir -p .tools
  cp "$work/unpacked/usr/bin/promtool" .tools/promtool
  rm -rf "$work"
fi
if [ ! -x node_modules/.bin/buf ] || [ ! -d node_modules/grpc-js-reflection-client ] ||
  [ ! -d node_modules/@nats-io/jetstream ] || [ ! -d node_modules/@nats-io/jwt ]; then
  echo "installing npm packages (buf; grpc-js for tools/grpc-call; nats.js for tools/watch-events; NATS JWTs for the tests)"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi
