#!/usr/bin/env bash
# `make image-check`: builds a service's container image from the Dockerfile
# and runs it, on a machine with no Docker engine and no registry (only
# Debian's mirrors), as far as that allows:
#   1. the base images (debian:12, debian:12-slim) come from debootstrap,
#      imported into podman, unless podman already has them;
#   2. `podman build --isolation chroot` builds the image;
#   3. the image's root filesystem runs the service under chroot, as uid
#      65532 like the Deployment, against a throwaway PostgreSQL and NATS: it
#      must apply its migrations, report both dependencies up on /metrics,
#      listen for gRPC, and stop on SIGTERM.
# Usage: tools/dev/image-check.sh [SERVICE...]   (default: partners scheduling)
# Needs root (chroot, mounts) and installs podman and debootstrap if missing.
# About 4 minutes per service on 2 cores. Not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/dev/lib.sh
[ "$(id -u)" = 0 ] || { echo "image-check: needs root (chroot and mounts)" >&2; exit 2; }
services=("$@")
[ ${#services[@]} -gt 0 ] || services=(partners scheduling)
for tool in podman debootstrap; do
  command -v "$tool" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends podman debootstrap uidmap >/dev/null
done
podman() { command podman --storage-driver vfs "$@"; }

work=$(mktemp -d /tmp/connecting-image.XXXXXX)
chmod 755 "$work"
cid="" mnt="" pid=""
cleanup() {
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
  if [ -n "$mnt" ]; then umount "$mnt/proc" "$mnt/dev" 2>/dev/null || true; fi
  [ -n "$cid" ] && { podman umount "$cid" >/dev/null 2>&1 || true; podman rm "$cid" >/dev/null 2>&1 || true; }
  stop_nats "$work/nats"
  stop_postgres "$work/pg"
  rm -rf "$work"
}
trap cleanup EXIT

if ! podman image exists docker.io/library/debian:12; then
  echo "image-check: building debian:12 with debootstrap"
  debootstrap --variant=minbase bookworm "$work/root" http://deb.debian.org/debian >"$work/debootstrap.log"
  rm -f "$work/root"/var/cache/apt/archives/*.deb
  tar -C "$work/root" -c . | podman import - docker.io/library/debian:12 >/dev/null
  podman tag docker.io/library/debian:12 docker.io/library/debian:12-slim
  rm -rf "$work/root"
fi

pg_port=$(free_port)
start_postgres "$work/pg" "$pg_port" fast
nats_port=$(free_port)
start_nats "$work/nats" "$nats_port"
key=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
fail() { echo "image-check: $service: $*" >&2; tail -5 "$work/$service.log" >&2; exit 1; }

for service in "${services[@]}"; do
  echo "image-check: building connecting/$service"
  podman build --isolation chroot --pull=never --network host --build-arg SERVICE="$service" \
    -t "connecting/$service:check" . >"$work/build-$service.log" 2>&1 ||
    { tail -20 "$work/build-$service.log" >&2; exit 1; }
  command psql -h 127.0.0.1 -p "$pg_port" -U postgres -qc "CREATE DATABASE $service"
  cid=$(podman create "connecting/$service:check")
  mnt=$(podman mount "$cid")
  mount --bind /dev "$mnt/dev"
  mount -t proc proc "$mnt/proc"
  grpc=$(free_port) metrics=$(free_port)
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    DATABASE_URL="postgresql://postgres@127.0.0.1:$pg_port/$service" \
    NATS_URL="nats://127.0.0.1:$nats_port" GRPC_LISTEN="127.0.0.1:$grpc" \
    METRICS_LISTEN="127.0.0.1:$metrics" AUTH_JWT_KEY="$key" \
    chroot --userspec=65532:65532 "$mnt" /usr/local/bin/service >"$work/$service.log" 2>&1 &
  pid=$!
  wait_port 127.0.0.1 "$grpc" 30 "$pid" || fail "no gRPC listener"
  up=""
  for _ in $(seq 1 50); do
    up=$(curl -s "http://127.0.0.1:$metrics/metrics" | grep -c '^connecting_dependency_up{.*} 1' || true)
    [ "$up" = 2 ] && break
    sleep 0.2
  done
  [ "$up" = 2 ] || fail "PostgreSQL and NATS not both up on /metrics"
  grep -q '"database schema is current"' "$work/$service.log" || fail "no migrations"
  kill -TERM "$pid"
  code=0
  wait "$pid" || code=$?
  pid=""
  [ "$code" = 0 ] || fail "exit code $code on SIGTERM"
  umount "$mnt/proc" "$mnt/dev"
  podman umount "$cid" >/dev/null
  podman rm "$cid" >/dev/null
  cid="" mnt=""
  size=$(podman image inspect --format '{{.Size}}' "connecting/$service:check")
  echo "image-check: connecting/$service:check ($((size / 1000000)) MB) runs as uid 65532:" \
    "migrations applied, PostgreSQL and NATS up, gRPC listening, exit 0 on SIGTERM"
done
