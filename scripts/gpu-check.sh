#!/usr/bin/env bash
# Issue 12's GPU check, for a machine with an NVIDIA GPU and neither Go nor
# LLVM. It uses only the prebuilt bundle of scripts/gpu-bundle.sh (make
# gpu-bundle), in the directory holding this script or the one given:
#
#   1. the driver: without libcuda.so.1 or a GPU it stops at once (exit 1)
#   2. the weights of every program, regenerated with the bundle's kiln
#      (kiln build --format weights; each checked against the program's
#      SHA-256 when loaded)
#   3. correctness: every network and precision on the fixture inputs
#      against the CPU backend's outputs: fp32 within 1e-4 x max|ref|,
#      tf32 and bf16 within 2e-2 x max|ref| and the same top-1 per image
#   4. timings: the cells of the issue's table (CUDA-event median of the
#      replayed CUDA graph; img/s at batch 64 and 256), next to PyTorch 2.11
#      + cuDNN 9.19 on an H200 (the anchors), with the ratio kiln/anchor for
#      latency (below 1 is faster) and anchor/kiln for throughput
#
# Exit status: 0 when every correctness check passes, 1 otherwise. Output
# is plain text meant for BENCHMARKS.md. Usage: [ITERS=50] [BUDGET=300]
# gpu-check.sh [BUNDLE_DIR]. Timing cells not started within BUDGET seconds
# are reported as skipped, so the whole check stays under 6 minutes.
set -u -o pipefail
B=${1:-$(cd "$(dirname "$0")" && pwd)}
ITERS=${ITERS:-50}
BUDGET=${BUDGET:-300} # seconds: timing cells not started by then are skipped
cd "$B" || exit 1
RUNNER=./bin/kiln-runner
KILN=./bin/kiln
t0=$(date +%s)
[ -x "$RUNNER" ] && [ -d programs ] || { echo "gpu-check: $B is not a GPU bundle (make gpu-bundle builds one)" >&2; exit 1; }
elapsed() { echo $(( $(date +%s) - t0 ))s; }

# 1. The driver, before any work: a program run without its weights fails
# on the driver first.
first=$(ls programs/*.kgpu | head -1)
msg=$("$RUNNER" --program "$first" --bench 2>&1)
case "$msg" in
*"no NVIDIA driver"* | *"no CUDA device"*)
	echo "gpu-check: $msg" >&2
	exit 1
	;;
esac
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
echo "gpu-check: bundle $B, $(ls programs | wc -l) programs, $(date -u +%Y-%m-%dT%H:%M:%SZ)"

# 2. Weights, one blob per distinct SHA-256 (the weights depend on neither
# batch nor precision nor image size, so usually one per network).
mkdir -p weights
sha_of() { "$RUNNER" --program "$1" --info | sed -n 's/.*external, sha256:\([0-9a-f]*\)).*/\1/p'; }
declare -A SHA
for p in programs/*.kgpu; do
	f=$(basename "$p" .kgpu)
	IFS=. read -r net prec b r <<<"$f"
	sha=$(sha_of "$p")
	SHA[$f]=$sha
	if [ ! -f "weights/$sha.bin" ]; then
		echo "gpu-check: weights of $net (${r#r}x${r#r}) -> weights/$sha.bin ($(elapsed))"
		"$KILN" build "$net" --target cuda-sm90 --input "3x${r#r}x${r#r}" --format weights -o "weights/$sha.bin" >/dev/null 2>&1 ||
			{ echo "gpu-check: kiln build $net --format weights failed" >&2; exit 1; }
	fi
done

# 3. Correctness.
fail=0
echo
echo "== correctness vs the CPU backend on the fixture inputs ($(elapsed))"
for p in programs/*.b2.r139.kgpu; do
	f=$(basename "$p" .kgpu)
	IFS=. read -r net prec b r <<<"$f"
	if ! "$RUNNER" --program "$p" --weights-file "weights/${SHA[$f]}.bin" --input "inputs/$net.npy" --reference "refs/$net.npy" 2>&1; then
		fail=1
	fi
done

# 4. Timings next to the anchors.
declare -A ANCHOR=(
	[inception_v4.fp32.1]="7.79 ms" [inception_v4.fp32.8]="14.0 ms" [inception_v4.fp32.64]="868 img/s" [inception_v4.fp32.256]="1001 img/s"
	[inception_v4.tf32.1]="2.88 ms" [inception_v4.tf32.8]="4.86 ms" [inception_v4.tf32.64]="2857 img/s" [inception_v4.tf32.256]="3281 img/s"
	[inception_v4.bf16.1]="2.77 ms" [inception_v4.bf16.8]="4.24 ms" [inception_v4.bf16.64]="2378 img/s" [inception_v4.bf16.256]="4158 img/s"
	[inception_resnet_v2.fp32.1]="10.6 ms" [inception_resnet_v2.fp32.8]="16.9 ms" [inception_resnet_v2.fp32.64]="817 img/s" [inception_resnet_v2.fp32.256]="922 img/s"
	[inception_resnet_v2.tf32.1]="3.96 ms" [inception_resnet_v2.tf32.8]="6.14 ms" [inception_resnet_v2.tf32.64]="2559 img/s" [inception_resnet_v2.tf32.256]="3044 img/s"
	[inception_resnet_v2.bf16.1]="4.09 ms" [inception_resnet_v2.bf16.8]="5.20 ms" [inception_resnet_v2.bf16.64]="2073 img/s" [inception_resnet_v2.bf16.256]="4416 img/s"
)
echo
echo "== timings at 299x299, CUDA-event median of the replayed graph ($(elapsed))"
printf "%-20s %-5s %5s  %12s  %12s  %8s  %s\n" model prec batch kiln anchor ratio "(ratio: latency kiln/anchor, throughput anchor/kiln; < 1 beats the anchor)"
# Batch 1 and 8 first: with little time left, the large batches are the
# cells skipped.
for p in $(ls programs/*.r299.kgpu | sort -t. -k3.2n -k1,1 -k2,2); do
	f=$(basename "$p" .kgpu)
	IFS=. read -r net prec b r <<<"$f"
	b=${b#b}
	if [ $(($(date +%s) - t0)) -gt "$BUDGET" ]; then
		printf "%-20s %-5s %5s  %12s  %12s  %8s  %s\n" "$net" "$prec" "$b" skipped "${ANCHOR[$net.$prec.$b]:-"-"}" - "(past the ${BUDGET}s budget)"
		continue
	fi
	iters=$ITERS
	[ "$b" -gt 8 ] && iters=$((ITERS / 5 > 5 ? ITERS / 5 : 5)) # batch 64, 256: fewer, longer runs
	out=$("$RUNNER" --program "$p" --weights-file "weights/${SHA[$f]}.bin" --bench --iters "$iters" 2>&1)
	ms=$(sed -n 's/.*graph median \([0-9.]*\) ms.*/\1/p' <<<"$out")
	anchor=${ANCHOR[$net.$prec.$b]:-"-"}
	if [ -z "$ms" ]; then
		printf "%-20s %-5s %5s  %12s  %12s  %8s  %s\n" "$net" "$prec" "$b" failed "$anchor" - "$(tail -1 <<<"$out")"
		continue
	fi
	pk=$(sed -n 's/.*= \([0-9.]*% of the [a-z0-9]* peak\).*/\1/p' <<<"$out")
	case "$anchor" in
	*ms)
		kiln="$ms ms"
		ratio=$(awk -v k="$ms" -v a="${anchor% ms}" 'BEGIN { printf "%.2f", k / a }')
		;;
	*img/s)
		ips=$(awk -v k="$ms" -v b="$b" 'BEGIN { printf "%.0f", b / (k / 1000) }')
		kiln="$ips img/s"
		ratio=$(awk -v k="$ips" -v a="${anchor% img/s}" 'BEGIN { printf "%.2f", a / k }')
		;;
	*) kiln="$ms ms" ratio=- ;;
	esac
	printf "%-20s %-5s %5s  %12s  %12s  %8s  %s\n" "$net" "$prec" "$b" "$kiln" "$anchor" "$ratio" "$pk"
done
echo
echo "gpu-check: done in $(elapsed); correctness $([ $fail = 0 ] && echo PASS || echo FAIL)"
exit $fail
