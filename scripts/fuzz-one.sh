#!/usr/bin/env bash
# fuzz-one.sh PKG TARGET FUZZTIME: one short fuzz run of TARGET in package
# directory PKG (make fuzz). A failure fails the script, with one
# exception: Go before 1.27 can end a duration-bound run (-fuzztime=10s)
# with a bare "context deadline exceeded" and no failing input, a race in
# the fuzz coordinator's shutdown at the deadline, not a finding of the
# target (go.dev/issue/75804, fixed in Go 1.27). When a run fails that way
# and wrote no new input under PKG/testdata/fuzz/TARGET, it is run once
# more; a second failure of any kind fails the script. A real crash or hang
# always writes its input there, so it is never retried.
set -uo pipefail
[ $# -eq 3 ] || { echo "usage: fuzz-one.sh PKG TARGET FUZZTIME" >&2; exit 2; }
pkg=$1 name=$2 fuzztime=$3
go=${GO:-go}
corpus="$pkg/testdata/fuzz/$name"
for try in 1 2; do
  before=$(ls "$corpus" 2>/dev/null)
  out=$("$go" test -run='^$' -fuzz="^$name\$" -fuzztime="$fuzztime" "./$pkg" 2>&1)
  rc=$?
  printf '%s\n' "$out"
  [ "$rc" -eq 0 ] && exit 0
  after=$(ls "$corpus" 2>/dev/null)
  if [ "$try" -eq 1 ] && [ "$before" = "$after" ] && printf '%s\n' "$out" | grep -qx '[[:space:]]*context deadline exceeded'; then
    echo "fuzz-one.sh: $name: \"context deadline exceeded\" with no failing input written: Go's fuzz coordinator race at the -fuzztime deadline (go.dev/issue/75804); running it once more" >&2
    continue
  fi
  exit "$rc"
done
exit 1
