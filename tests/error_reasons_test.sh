#!/usr/bin/env bash
# Every ErrorInfo reason the services send is in the README's table, the
# table lists none they no longer send, and each metadata key a reason is
# sent with is in that reason's row.
#
# Reasons and their metadata keys are part of the API: clients branch on
# them (libs/server/errors.h), so each one must be documented, and one that
# disappears from the code must disappear from the table on purpose.
# Reasons are the string literals given to server::Refusal(...) and
# server::WithReason(...) calls (whole calls, parentheses balanced, strings
# respected), in services/ and libs/; keys are the literal keys of the
# metadata in those calls ({{"bookingId", …}}), and server::NotPermitted's
# (role, and the ids its calls give).
# Usage (ctest runs it): error_reasons_test.sh [ROOT]
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
# "REASON key" lines, and "REASON" alone for a reason sent without keys.
calls=$(find services libs -name '*.cc' -print0 | xargs -0 perl -0777 -ne '
  while (/\b(?:Refusal|WithReason)\s*(\((?:[^()"]++|"(?:[^"\\]|\\.)*"|(?1))*\))/g) {
    my $call = $1;
    my @reasons = $call =~ /"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)"/g;
    my @keys = $call =~ /\{"([a-z][A-Za-z0-9]*)",/g;
    for my $r (@reasons) { print "$r\n"; print "$r $_\n" for @keys; }
  }
  # server::NotPermitted(principal, message, {{"key", …}}): NOT_PERMITTED with
  # the role and those keys.
  while (/\bNotPermitted\s*(\((?:[^()"]++|"(?:[^"\\]|\\.)*"|(?1))*\))/g) {
    my $call = $1;
    print "NOT_PERMITTED role\n";
    print "NOT_PERMITTED $_\n" for $call =~ /\{"([a-z][A-Za-z0-9]*)",/g;
  }' | sort -u)
sent=$(awk '{ print $1 }' <<<"$calls" | sort -u)
# The table under "Error details": each row's reason and metadata cells.
rows=$(awk '/^  \| reason \| code \| metadata \| cause \|/ { t = 1; next } t && !/^  \|/ { t = 0 }
  t && /^  \| `/ { split($0, c, "|"); print c[2] "|" c[4] }' README.md)
documented=$(cut -d'|' -f1 <<<"$rows" | grep -oE '`[A-Z_0-9]+`' | tr -d '`' | sort -u || true)
[ -n "$sent" ] || { echo "error reasons: found none in the code (has the helper been renamed?)" >&2; exit 1; }
[ -n "$documented" ] || { echo "error reasons: README has no Error details table" >&2; exit 1; }
if [ "$sent" != "$documented" ]; then
  echo "error reasons: the code and the README's Error details table differ" >&2
  echo "(< sent but not documented, > documented but not sent):" >&2
  diff <(echo "$sent") <(echo "$documented") >&2 || true
  exit 1
fi
missing=""
while read -r reason key; do
  [ -n "${key:-}" ] || continue
  cell=$(grep -F "\`$reason\`" <<<"$rows" | cut -d'|' -f2)
  grep -qF "\`$key\`" <<<"$cell" || missing+="  $reason: $key"$'\n'
done <<<"$calls"
if [ -n "$missing" ]; then
  echo "error reasons: metadata keys sent but not in their reason's README row:" >&2
  printf '%s' "$missing" >&2
  exit 1
fi
echo "error reasons: $(wc -l <<<"$sent") sent, each in the README's table with its $(grep -c ' ' <<<"$calls") metadata keys"
