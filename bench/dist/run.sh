#!/usr/bin/env bash
# Scaling benchmark of Kiln's data-parallel layer (issue 14, docs/DISTRIBUTED.md).
# All ranks are MPI processes on this machine, started by mpirun with
# dist.MpirunFlags and talking through Open MPI's shared memory (vader): the
# figures measure the software path, not a network, and the ranks share
# this machine's cores (state the core count and load with the figures).
#
#  1. all-reduce throughput, 2 ranks, 4 KB to 171 MB: dist.AllreduceSum
#     (bench/dist -sweep) against Open MPI's own MPI_Allreduce and
#     MPI_Iallreduce (testdata/allreduce.c, compiled here with mpicc);
#  2. one all-reduce of Inception-v4's gradients (42.7 M float32 = 171 MB)
#     with 1, 2 and 4 ranks, its bus bandwidth, and how much of it an
#     IallreduceSum hides behind a compute loop;
#  3. data-parallel training steps on the compiled backend (trainer.Replicas,
#     what kiln train --backend compiled runs under mpirun) of the mini nets
#     (8 images per rank, 1x28x28) and Inception-v4 (2 images per rank,
#     3x299x299) with 1, 2 and 4 ranks: step time split into compute,
#     exposed all-reduce wait and update, bytes all-reduced per step, and
#     the same bytes all-reduced alone. Inception-v4's step compiles for
#     many minutes with a cold object cache and takes about 4 GiB per rank.
#
#   bash bench/dist/run.sh          # make bench-dist (tens of minutes)
#   bash bench/dist/run.sh -smoke   # make bench-dist-smoke (about a minute loaded, warm object cache)
#
# BENCH_DIST_NETS overrides the networks of part 3 (NAME:BATCH[:CxHxW],...).
# mpirun's flags come from dist.MpirunFlags (KILN_MPIRUN_FLAGS overrides the
# transport); the load average is printed since other work skews the figures.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ranks=1,2,4
floats=42700000
reps=3
steps=3
nets=${BENCH_DIST_NETS:-mini_inception:8,mini_inception_resnet:8,inception_v4:2}
if [ "${1:-}" = "-smoke" ]; then
  ranks=1,2
  floats=1000000
  reps=2
  steps=1
  nets=${BENCH_DIST_NETS:-mini_inception:2}
fi
if ! command -v mpirun >/dev/null 2>&1; then
  echo "bench/dist: mpirun not found; install Open MPI: apt-get install libopenmpi-dev openmpi-bin" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/bench-dist" ./bench/dist
mpi=$("$tmp/bench-dist" -mpirun 2)
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2 " GiB, " $7 " GiB available"}'), load average:$(uptime | sed 's/.*load average://')"
echo "# mpirun flags: ${mpi% -np 2}"

echo "## 1. all-reduce throughput, 2 ranks (best of $reps calls, 50 below 4 MB)"
"$tmp/bench-dist" -sweep -ranks 2 -floats "$floats" -reps "$reps"
if command -v mpicc >/dev/null 2>&1; then
  mpicc -O2 -o "$tmp/allreduce" bench/dist/testdata/allreduce.c
  $mpi "$tmp/allreduce" "$floats" "$reps"
else
  echo "(mpicc not found: Open MPI's own rows skipped; apt-get install libopenmpi-dev)"
fi

echo "## 2. all-reduce of $floats float32 and its overlap with computation (median of $reps alternating rounds)"
"$tmp/bench-dist" -ranks "$ranks" -floats "$floats" -reps "$reps"

echo "## 3. data-parallel training steps, compiled backend (mean of $steps steps after 1 untimed)"
"$tmp/bench-dist" -nets "$nets" -ranks "$ranks" -steps "$steps"
echo "# load average after:$(uptime | sed 's/.*load average://')"
