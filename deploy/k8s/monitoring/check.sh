#!/usr/bin/env bash
# The alert rules, checked by promtool: their syntax, then the unit tests in
# alerts_test.yaml, which must test every alert. prometheusrule.yaml's spec (everything under `spec:`) is
# the plain rule file. Then the dashboard: its layout, and every panel's query
# parsed by promtool (as a recording rule, Grafana's variables given values). PROMTOOL names the binary (`make deps` fetches one into
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
# Every alert has a unit test and a line in the operators' table
# (docs/operations.md, Monitoring), and the table lists no alert that is gone.
alerts=$(sed -n 's/^ *- alert: *//p' prometheusrule.yaml | sort -u)
documented=$(grep -o '^| `Connecting[A-Za-z]*`' ../../../docs/operations.md | tr -d '|` ' | sort -u)
for a in $alerts; do
  grep -Eq "alertname: $a([^A-Za-z]|$)" alerts_test.yaml || { echo "monitoring: alert $a has no unit test" >&2; exit 1; }
done
[ "$alerts" = "$documented" ] || {
  echo "monitoring: docs/operations.md's alert table differs from prometheusrule.yaml:" >&2
  diff <(echo "$alerts") <(echo "$documented") >&2 || true
  exit 1
}
node - dashboard.json "$work/dashboard_rules.yaml" <<'JS'
const fs = require("fs");
const [file, out] = process.argv.slice(2);
const d = JSON.parse(fs.readFileSync(file, "utf8"));
const fail = (m) => { console.error(`dashboard: ${m}`); process.exit(1); };
const ids = new Set(), cells = new Set(), rules = [];
if (!d.uid || !d.title) fail("no uid or title");
for (const v of ["datasource", "service"]) {
  if (!d.templating.list.some((t) => t.name === v)) fail(`no variable ${v}`);
}
for (const p of d.panels) {
  if (ids.has(p.id)) fail(`panel id ${p.id} twice`);
  ids.add(p.id);
  const g = p.gridPos;
  if (!g || g.x < 0 || g.x + g.w > 24) fail(`"${p.title}" lies outside the grid`);
  for (let y = g.y; y < g.y + g.h; y++) {
    for (let x = g.x; x < g.x + g.w; x++) {
      if (cells.has(`${x},${y}`)) fail(`"${p.title}" overlaps another panel`);
      cells.add(`${x},${y}`);
    }
  }
  if (p.type === "row") continue;
  if (!p.description) fail(`"${p.title}" says nothing of what it shows`);
  if (p.datasource?.uid !== "${datasource}") fail(`"${p.title}" ignores the data source variable`);
  if (!p.targets?.length) fail(`"${p.title}" has no query`);
  for (const t of p.targets) {
    if (!t.expr.includes('service=~"$service"')) fail(`"${p.title}" ignores the service variable`);
    const expr = t.expr.replaceAll("$__rate_interval", "5m").replaceAll("$service", ".+");
    rules.push(`      - record: dashboard:panel_${p.id}_${t.refId}\n        expr: ${JSON.stringify(expr)}`);
  }
}
fs.writeFileSync(out, `groups:\n  - name: dashboard\n    rules:\n${rules.join("\n")}\n`);
console.log(`dashboard: ${ids.size} panels, ${rules.length} queries`);
JS
"$promtool" check rules "$work/dashboard_rules.yaml"
