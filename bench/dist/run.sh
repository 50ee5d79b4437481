#!/usr/bin/env bash
# Scaling benchmark of Kiln's data-parallel layer (issue 14, docs/DISTRIBUTED.md):
# with 1, 2 and 4 MPI ranks on this machine, the time of one all-reduce of
# Inception-v4's gradients (42.7 M float32 = 171 MB), its bus bandwidth, and
# the fraction a nonblocking all-reduce hides behind computation
# (bench/dist/main.go). Then, when kiln train has data-parallel profiling
# (--profile-dist), the per-step compute / all-reduce wait of the mini nets
# under mpirun. Ranks share this machine's cores: the figures measure the
# software path (shared-memory transport), not a network.
#
#   bash bench/dist/run.sh          # make bench-dist (minutes)
#   bash bench/dist/run.sh -smoke   # make bench-dist-smoke (seconds: 1 M floats, ranks 1,2)
#
# KILN=path/to/kiln picks the kiln binary (default bin/kiln).
# mpirun's flags come from dist.MpirunFlags (KILN_MPIRUN_FLAGS overrides the
# transport); the load average is printed since other work skews the figures.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ranks=1,2,4
floats=42700000
reps=2
nets=1
if [ "${1:-}" = "-smoke" ]; then
  ranks=1,2
  floats=1000000
  reps=2
  nets=0
fi
if ! command -v mpirun >/dev/null 2>&1; then
  echo "bench/dist: mpirun not found; install Open MPI: apt-get install libopenmpi-dev openmpi-bin" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/bench-dist" ./bench/dist
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average:$(uptime | sed 's/.*load average://')"
echo "## all-reduce of $floats float32 (median of $reps alternating rounds)"
"$tmp/bench-dist" -ranks "$ranks" -floats "$floats" -reps "$reps"

kiln=${KILN:-bin/kiln}
if [ "$nets" = 1 ] && [ -x "$kiln" ] && "$kiln" train -h 2>&1 | grep -q -- '-profile-dist'; then
  echo "## kiln train --profile-dist, per-step split (rank 0), Fashion-MNIST, batch 16 per rank, 3 steps (--ghost-batch 16: the data-parallel path also at 1 rank)"
  for net in mini_inception mini_inception_resnet; do
    for np in ${ranks//,/ }; do
      mpi=$("$tmp/bench-dist" -mpirun "$np")
      out=$($mpi "$kiln" train "$net" --data fashion-mnist --epochs 1 --batch 16 --ghost-batch 16 \
        --limit-train $((np * 16 * 3)) --limit-test 16 --profile-dist --out "$tmp/run-$net-$np" 2>&1 || true)
      echo "$net, $np ranks: $(echo "$out" | grep -m1 'per step:' || echo "$out" | tail -3)"
    done
  done
fi
echo "# load average after:$(uptime | sed 's/.*load average://')"
