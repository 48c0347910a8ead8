#!/usr/bin/env bash
# The runtime image installs every shared library the service binaries load:
# each library `ldd` resolves for the given binaries belongs to a Debian
# package that the Dockerfile's final stage installs, directly or as a
# dependency. Checked without a container engine, on the Debian 12 the
# image is built from.
#   deploy/check-image-libs.sh build/services/*/partners build/services/*/scheduling
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
# The packages after `apt-get install` in the stage that starts FROM debian:12-slim.
runtime=$(awk '/^FROM debian:12-slim/ { f = 1 } f && /apt-get install/ { g = 1 }
               g { print } g && /rm -rf/ { exit }' Dockerfile |
  tr ' \\&' '\n' | grep -E '^[a-z0-9][a-z0-9.+-]+$' |
  grep -vE '^(apt-get|install|rm|update|DEBIAN_FRONTEND|no-install-recommends|y|var)$' || true)
[ -n "$runtime" ] || { echo "image: no runtime packages found in the Dockerfile" >&2; exit 1; }
provided=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
  --no-replaces --no-enhances $runtime 2>/dev/null | grep -v '^ ' | sed 's/:amd64$//' | sort -u)
missing=0
for lib in $(ldd "$@" | awk '/=> \// { print $3 }' | sort -u); do
  pkg=$(dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib" 2>/dev/null || true)
  pkg=${pkg%%:*}
  if [ -z "$pkg" ]; then
    echo "image: $lib belongs to no Debian package" >&2; missing=1
  elif ! grep -qx "$pkg" <<<"$provided"; then
    echo "image: $lib ($pkg) is not installed by the runtime stage" >&2; missing=1
  fi
done
[ "$missing" = 0 ] || exit 1
echo "image: the runtime stage provides every library of $# binaries ($(wc -w <<<"$runtime") packages named)"
