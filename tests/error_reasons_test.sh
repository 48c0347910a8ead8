#!/usr/bin/env bash
# Every ErrorInfo reason the services send is in the README's table, and the
# table lists none they no longer send.
#
# A reason is part of the API: clients branch on it (libs/server/errors.h),
# so each one must be documented, and one that disappears from the code must
# disappear from the table on purpose. Reasons are the string literals given
# to server::Refusal(...) and server::WithReason(...) calls (whole calls,
# parentheses balanced, strings respected), in services/ and libs/.
# Usage (ctest runs it): error_reasons_test.sh [ROOT]
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
sent=$(find services libs -name '*.cc' -print0 | xargs -0 perl -0777 -ne '
  while (/\b(?:Refusal|WithReason)\s*(\((?:[^()"]++|"(?:[^"\\]|\\.)*"|(?1))*\))/g) {
    my $call = $1;
    print "$1\n" while $call =~ /"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)"/g;
  }' | sort -u)
# The table under "Error details": its first column's names.
documented=$(awk '/^  \| reason \| code \| cause \|/ { t = 1; next } t && !/^  \|/ { t = 0 }
  t && /^  \| `/ { split($0, c, "|"); print c[2] }' README.md | grep -oE '`[A-Z_0-9]+`' | tr -d '`' |
  sort -u)
[ -n "$sent" ] || { echo "error reasons: found none in the code (has the helper been renamed?)" >&2; exit 1; }
[ -n "$documented" ] || { echo "error reasons: README has no Error details table" >&2; exit 1; }
if [ "$sent" != "$documented" ]; then
  echo "error reasons: the code and the README's Error details table differ" >&2
  echo "(< sent but not documented, > documented but not sent):" >&2
  diff <(echo "$sent") <(echo "$documented") >&2 || true
  exit 1
fi
echo "error reasons: $(wc -l <<<"$sent") sent, each in the README's table"
