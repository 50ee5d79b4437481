#!/usr/bin/env bash
# Prepares, on the CPU build machine, everything scripts/gpu-check.sh needs
# on a GPU machine that has neither Go nor LLVM (issue 12): `make
# gpu-bundle` runs it. The bundle directory (default out/gpu-bundle) gets
#
#   bin/kiln-runner, bin/kiln   the runner runs GPU programs (--program);
#                               kiln regenerates their weights there
#                               (kiln build --format weights needs no LLVM)
#   programs/NET.PREC.bB.rR.kgpu  GPU programs (PTX + launch list, weights
#                               left out: --weights-external), one per
#                               network, precision, batch B and image size R
#   inputs/NET.npy              the fixture inputs (2x3x139x139; Inception-
#                               ResNet-v1, which has no fixture, takes
#                               Inception-v4's)
#   refs/NET.npy                the CPU backend's outputs on them
#   gpu-check.sh
#
# and out/gpu-bundle.tar.gz packs it (the weights of the three networks are
# 600 MB; the bundle without them is about 30 MB compressed). Knobs (env):
# CHECK_NETS, BENCH_NETS, PRECISIONS, BENCH_BATCHES, BUNDLE, KILN_SHARED;
# KEEP=1 keeps the programs and references of an earlier run of the same
# kiln (resuming an interrupted one).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${BUNDLE:-out/gpu-bundle}
SHARED=${KILN_SHARED:-../shared}
CHECK_NETS=${CHECK_NETS:-"inception_v4 inception_resnet_v2 inception_resnet_v1"}
BENCH_NETS=${BENCH_NETS:-"inception_v4 inception_resnet_v2"}
PRECISIONS=${PRECISIONS:-"fp32 tf32 bf16"}
BENCH_BATCHES=${BENCH_BATCHES:-"1 8 64 256"}
TARGET=${TARGET:-cuda-sm90}

[ -f bin/kiln ] && [ -f bin/kiln-runner ] || { echo "gpu-bundle: run make build first" >&2; exit 1; }
[ "${KEEP:-0}" = 1 ] || rm -rf "$BUNDLE"
mkdir -p "$BUNDLE"/bin "$BUNDLE"/programs "$BUNDLE"/inputs "$BUNDLE"/refs
cp bin/kiln bin/kiln-runner "$BUNDLE"/bin/
cp scripts/gpu-check.sh "$BUNDLE"/

fixture_input() { # NET -> the fixture input to use
	if [ -f "$SHARED/fixtures/$1/input.npy" ]; then
		echo "$SHARED/fixtures/$1/input.npy"
	else
		echo "$SHARED/fixtures/inception_v4/input.npy"
	fi
}

program() { # NET PREC BATCH RES
	local out="$BUNDLE/programs/$1.$2.b$3.r$4.kgpu"
	[ "${KEEP:-0}" = 1 ] && [ -f "$out" ] && return
	echo "gpu-bundle: $out"
	# Batch 256 at 299x299 has 1.4 GB activations (the default limit is 1 GiB).
	bin/kiln build "$1" --target "$TARGET" --precision "$2" --batch "$3" --input "3x$4x$4" --max-tensor-bytes $((16 << 30)) \
		--format program --weights-external -o "$out" 2>&1 | grep -v '^warning: no --weights' || { echo "gpu-bundle: building $out failed" >&2; exit 1; }
}

for net in $CHECK_NETS; do
	in=$(fixture_input "$net")
	[ -f "$in" ] || { echo "gpu-bundle: fixture input $in not found (set KILN_SHARED)" >&2; exit 1; }
	cp -f "$in" "$BUNDLE/inputs/$net.npy"
	if [ "${KEEP:-0}" != 1 ] || [ ! -f "$BUNDLE/refs/$net.npy" ]; then
		echo "gpu-bundle: CPU reference for $net"
		bin/kiln run "$net" --backend cpu --input "$BUNDLE/inputs/$net.npy" --output "$BUNDLE/refs/$net.npy" >/dev/null 2>"$BUNDLE/refs/$net.log" ||
			{ cat "$BUNDLE/refs/$net.log" >&2; exit 1; }
	fi
	for prec in $PRECISIONS; do
		program "$net" "$prec" 2 139
	done
done
for net in $BENCH_NETS; do
	for prec in $PRECISIONS; do
		for b in $BENCH_BATCHES; do
			program "$net" "$prec" "$b" 299
		done
	done
done
tar -C "$(dirname "$BUNDLE")" -czf "$BUNDLE.tar.gz" "$(basename "$BUNDLE")"
du -sh "$BUNDLE" "$BUNDLE.tar.gz"
echo "gpu-bundle: carry $BUNDLE.tar.gz to the GPU machine, then: tar xzf gpu-bundle.tar.gz && gpu-bundle/gpu-check.sh"
