#!/usr/bin/env bash
# The alert rules, checked by promtool: their syntax, then the unit tests in
# alerts_test.yaml. prometheusrule.yaml's spec (everything under `spec:`) is
# the plain rule file. PROMTOOL names the binary (`make deps` fetches one into
# .tools/ when none is on the PATH).
set -euo pipefail
[ -n "${PROMTOOL:-}" ] && PROMTOOL=$(realpath "$PROMTOOL")
cd "$(dirname "$0")"
promtool=${PROMTOOL:-$(command -v promtool || echo "$PWD/../../../.tools/promtool")}
[ -x "$promtool" ] || { echo "monitoring: promtool not found (run make deps)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
awk 'f { print substr($0, 3) } /^spec:$/ { f = 1 }' prometheusrule.yaml >"$work/rules.yaml"
cp alerts_test.yaml "$work/"
"$promtool" check rules "$work/rules.yaml"
(cd "$work" && "$promtool" test rules alerts_test.yaml)
