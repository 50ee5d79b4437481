#!/usr/bin/env bash
# make peers-train: training throughput (forward + backward + RMSProp step,
# img/s) of Kiln's `kiln train` against PyTorch (bench/train/torch_train.py,
# Debian's python3-torch) on the two mini networks, same recipe (RMSProp
# lr 0.045/alpha 0.9/eps 1.0/momentum 0.9, label smoothing 0.1, BatchNorm in
# training mode, batch 128, 2 threads, Fashion-MNIST without augmentation),
# run alternately in one command: each round runs both frameworks on each
# network, Kiln first in odd rounds and PyTorch first in even ones, and prints
# img/s and the ratio Kiln/PyTorch; the last lines are the medians.
#
# Kiln: kiln train NET --data fashion-mnist --limit-train STEPS*BATCH
# --epochs 2 --crop-pad 0 --flip=false --threads T [--backend B]; the figure
# is metrics.csv's img/s of epoch 2 (epoch 1 is the warm-up: step graph built
# or compiled, caches filled; the learning rate, and so the step graph, is
# the same in both). PyTorch: --warmup 2 untimed steps, then STEPS timed ones.
#
# Inception-v4 (-nets inception_v4; make peers-train-inception): Kiln's side
# is bench/train/kilnstep (the compiled training step that kiln train
# --backend compiled runs, on one fixed synthetic batch of -input, procedural
# weights, the same recipe; -warmup steps untimed, the first of them the
# compile), PyTorch's torch_inception_v4.py (timm's module tree) on a
# synthetic batch of the same shape, channels_last, the same warm-up. Each
# round also prints both processes' peak resident sets (VmHWM; Kiln's
# includes the LLVM build), their peaks over the steps after the first
# (VmHWM reset after the first warm-up step, Kiln's compile), and Kiln's
# arena (activations, gradients, parameters and optimizer state, the plan's
# size: kiln plan --train prints it too).
#
# usage: bench/train/run.sh [-nets "inc res"] [-rounds 3] [-steps 10]
#        [-batch 128] [-threads 2] [-backend auto|interp|compiled] [-smoke]
#        [-input 3x299x299] [-warmup 2]
# -backend auto uses `--backend compiled` when kiln train offers it, else
# the interpreter. -smoke (make peers-train-smoke, seconds): checks the
# PyTorch networks against ../shared/fixtures/training (when present), then
# one round of 2 steps at batch 8, without any speed claim.
# KILN names the kiln binary (default bin/kiln).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
kiln="${KILN:-$root/bin/kiln}"
torch_py="$root/bench/train/torch_train.py"
nets="inc res" rounds=3 steps=10 batch=128 threads=2 backend=auto smoke=0 input=3x299x299 warmup=2
while [ $# -gt 0 ]; do
  case "$1" in
    -nets) nets="$2"; shift 2 ;;
    -rounds) rounds="$2"; shift 2 ;;
    -steps) steps="$2"; shift 2 ;;
    -batch) batch="$2"; shift 2 ;;
    -threads) threads="$2"; shift 2 ;;
    -backend) backend="$2"; shift 2 ;;
    -input) input="$2"; shift 2 ;;
    -warmup) warmup="$2"; shift 2 ;;
    -smoke) smoke=1 rounds=1 steps=2 batch=8; shift ;;
    -h|-help|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see -h)" >&2; exit 2 ;;
  esac
done
# Debian's python3-torch is on /usr/bin/python3's path; a python3 earlier on
# PATH (pyenv, a venv) may not see it. $PYTHON overrides.
PYTHON=${PYTHON:-$([ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3)}
[ -x "$kiln" ] || { echo "run.sh: $kiln not found: run make build (or set KILN)" >&2; exit 1; }
"$PYTHON" -c 'import torch, numpy' 2>/dev/null ||
  { echo "run.sh: PyTorch is not installed for python3: apt-get install python3-torch" >&2; exit 1; }
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] ||
  { echo "run.sh: Fashion-MNIST missing: apt-get install dataset-fashion-mnist" >&2; exit 1; }

backend_flag=()
case "$backend" in
  auto) help="$("$kiln" train -h 2>&1 || true)" # not piped into grep -q: SIGPIPE under pipefail
        if [[ "$help" == *-backend* && "$help" == *compiled* ]]; then
          backend=compiled backend_flag=(--backend compiled)
        else backend=interp; fi ;;
  interp) ;;
  *) backend_flag=(--backend "$backend") ;;
esac

if [ "$smoke" = 1 ]; then
  fx="${KILN_SHARED:-$root/../shared}/fixtures/training"
  if [ -e "$fx/index.json" ]; then
    "$PYTHON" "$torch_py" --check-fixtures "$fx"
  else
    echo "no training fixtures at $fx: skipping the PyTorch networks' check"
  fi
  tsv="${KILN_SHARED:-$root/../shared}/timm_state_dict_inception_v4.tsv"
  if [ -e "$tsv" ]; then
    "$PYTHON" "$torch_py" --check-names "$tsv"
  else
    echo "no $tsv: skipping the PyTorch Inception-v4's check"
  fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
kiln_name() { case "$1" in inc) echo mini_inception ;; res) echo mini_inception_resnet ;; *) echo "$1" ;; esac; }

# kiln_ips NET: epoch 2's img/s of a two-epoch run of STEPS steps each.
kiln_ips() {
  local out="$work/run-$1-$RANDOM"
  "$kiln" train "$(kiln_name "$1")" --data fashion-mnist --limit-train $((steps * batch)) --limit-test 1 \
    --batch "$batch" --epochs 2 --crop-pad 0 --flip=false --threads "$threads" --progress none \
    ${backend_flag[@]+"${backend_flag[@]}"} --out "$out" >"$work/kiln.log" 2>&1 ||
    { cat "$work/kiln.log" >&2; exit 1; }
  awk -F, 'NR > 1 { v = $6 } END { print v }' "$out/metrics.csv"
  rm -rf "$out"
}

# PyTorch runs with glibc's malloc told to keep freed memory (no trim, no
# mmap for big blocks): by default glibc returns each step's freed
# activations to the kernel and page-faults them back in the next step,
# which made PyTorch's steps vary 4x and its median 1.5-2x slower here
# (measured 2026-11-30, quiet: mini_inception 390 vs 658-702 img/s); Intel's
# PyTorch CPU tuning guide recommends the same (or tcmalloc, which measured
# the same as these settings). PEER_MALLOC_ENV= (empty) turns it off.
read -r -a torch_env <<<"${PEER_MALLOC_ENV-MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824}"

torch_ips() {
  env ${torch_env[@]+"${torch_env[@]}"} "$PYTHON" "$torch_py" --net "$1" --batch "$batch" --threads "$threads" --steps "$steps" --warmup 2 |
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["img_per_s"])'
}

# Inception-v4: kilnstep and torch_train.py, each one JSON line.
v4_round() { # v4_round R: prints one round's line, records the figures
  local kj tj
  if [ $(($1 % 2)) = 1 ]; then kj=$(kiln_v4); tj=$(torch_v4); else tj=$(torch_v4); kj=$(kiln_v4); fi
  "$PYTHON" - "$1" "$kj" "$tj" "$work/v4.tsv" <<'PY'
import json, sys
r, k, t, path = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
ratio = k["img_per_s"] / t["img_per_s"]
print(f"round {r}  inception_v4 kiln {k['img_per_s']:7.2f} img/s (native step alone {k['run_img_per_s']:.2f}; compile {k['compile_s']:.0f} s)"
      f"  pytorch {t['img_per_s']:7.2f} img/s  kiln/pytorch {ratio:.2f}")
print(f"         memory: kiln arena {k['arena_bytes'] / 2**20:.0f} MiB, peak RSS {k['peak_rss_mib']:.0f} MiB (with the compile),"
      f" {k['step_peak_rss_mib']:.0f} MiB after the first step;"
      f"  pytorch peak RSS {t['peak_rss_mib']:.0f} MiB, {t['step_peak_rss_mib']:.0f} MiB after the first step")
with open(path, "a") as f:
    f.write(f"{k['img_per_s']}\t{t['img_per_s']}\t{ratio}\t{k['arena_bytes']}\t{k['step_peak_rss_mib']}\t{t['step_peak_rss_mib']}\n")
PY
}
kiln_v4() {
  "$work/kilnstep" -net inception_v4 -batch "$batch" -input "$input" -steps "$steps" -warmup "$warmup" -threads "$threads" 2>"$work/kilnstep.log" ||
    { cat "$work/kilnstep.log" >&2; exit 1; }
}
torch_v4() {
  env ${torch_env[@]+"${torch_env[@]}"} "$PYTHON" "$torch_py" --net inception_v4 --input "$input" --batch "$batch" --threads "$threads" --steps "$steps" --warmup "$warmup"
}
if [ "$nets" = inception_v4 ]; then
  (cd "$root" && ${GO:-go} build -o "$work/kilnstep" ./bench/train/kilnstep)
  echo "Inception-v4 training step, Kiln compiled vs PyTorch $("$PYTHON" -c 'import torch; print(torch.__version__)'): batch $batch, input $input, $threads threads, $warmup warm-up + $steps timed steps, $rounds rounds; PyTorch env: ${torch_env[*]:-none}"
  for r in $(seq 1 "$rounds"); do v4_round "$r"; done
  "$PYTHON" - "$work/v4.tsv" <<'PY'
import statistics, sys
rows = [[float(v) for v in l.split()] for l in open(sys.argv[1])]
m = [statistics.median(c) for c in zip(*rows)]
print(f"median inception_v4 kiln {m[0]:.2f} img/s  pytorch {m[1]:.2f} img/s  kiln/pytorch {m[2]:.2f};"
      f"  kiln arena {m[3] / 2**20:.0f} MiB; peak RSS after the first step kiln {m[4]:.0f} MiB vs pytorch {m[5]:.0f} MiB")
PY
  exit 0
fi

echo "kiln train (backend $backend) vs PyTorch $("$PYTHON" -c 'import torch; print(torch.__version__)'): batch $batch, $threads threads, $steps timed steps, $rounds rounds; PyTorch env: ${torch_env[*]:-none}"
declare -A all
for r in $(seq 1 "$rounds"); do
  for n in $nets; do
    if [ $((r % 2)) = 1 ]; then k=$(kiln_ips "$n"); t=$(torch_ips "$n")
    else t=$(torch_ips "$n"); k=$(kiln_ips "$n"); fi
    ratio=$("$PYTHON" -c "print(f'{$k / $t:.2f}')")
    all[$n]="${all[$n]:-} $ratio"
    all[$n-k]="${all[$n-k]:-} $k"
    all[$n-t]="${all[$n-t]:-} $t"
    printf 'round %d  %-4s kiln %9.1f img/s  pytorch %9.1f img/s  kiln/pytorch %s\n' "$r" "$n" "$k" "$t" "$ratio"
  done
done
for n in $nets; do
  "$PYTHON" - "$n" "${all[$n-k]}" "${all[$n-t]}" "${all[$n]}" <<'PY'
import statistics, sys
n, k, t, r = sys.argv[1], *[[float(v) for v in a.split()] for a in sys.argv[2:]]
print(f"median {n:4s} kiln {statistics.median(k):9.1f} img/s  pytorch {statistics.median(t):9.1f} img/s  kiln/pytorch {statistics.median(r):.2f}")
PY
done
