#!/usr/bin/env bash
# The GPU check of issue 20: on a CUDA machine, from a checkout of cpx, in a few minutes,
#   1. one epoch of the `best` recipe at 512 px on the real data (900 images),
#   2. `cpx bench best --device cuda` (images/s, share of the attainable FLOP/s, peak memory),
#   3. flip-TTA prediction of the 100 test images,
# and prints every figure (also as JSON into $OUT, when set, else ./gpu-check-out).
#
# A bare CUDA machine with torch but no network: carry the wheels cpx needs beside the
# checkout (`--wheels DIR`, installed with --no-index) and a copy of the data (`--data DIR`).
# Try it on the CPU first with small settings:
#   benchmarks/gpu_check.sh --device cpu --image-size 64 --epochs 1 --data ../shared/data/celebamask-mini
#
# Options: --device cuda|cpu (cuda), --data DIR (../shared/data/celebamask-mini), --wheels DIR,
# --image-size N (512), --epochs N (1), --recipe NAME (best), -h/--help (this text).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
device=cuda data="$here/../shared/data/celebamask-mini" wheels="" size=512 epochs=1 recipe=best
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
fail() { echo "gpu_check.sh: $*" >&2; exit 2; }
folder() { [ -d "$2" ] || fail "$1 $2: no such folder"; (cd "$2" && pwd); }
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --device|--data|--wheels|--image-size|--epochs|--recipe) [ $# -ge 2 ] || fail "$1 needs a value" ;;
    *) fail "unknown option $1 (--help lists them)" ;;
  esac
  case "$1" in
    --device) device="$2" ;;
    --data) data="$(folder --data "$2")" ;;
    --wheels) wheels="$(folder --wheels "$2")" ;;
    --image-size) size="$2" ;;
    --epochs) epochs="$2" ;;
    --recipe) recipe="$2" ;;
  esac
  shift 2
done
out="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$out"
[ -d "$data/train/images" ] || { echo "gpu_check.sh: no data folder at $data (give --data DIR)" >&2; exit 2; }

if [ -n "$wheels" ]; then  # no network: everything cpx needs besides torch comes from the carried wheels
  python3 -m pip install -q --no-index --find-links "$wheels" --no-build-isolation -e "$here" 2>&1 | tail -1
elif ! command -v cpx >/dev/null; then
  python3 -m pip install -q -e "$here" 2>&1 | tail -1
fi

python3 - <<'EOF' | tee "$out/machine.txt"
import os, platform, torch
print(f"torch {torch.__version__}  cuda {torch.version.cuda}  python {platform.python_version()}  cpus {os.cpu_count()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu {p.name}  {p.total_memory / 2**30:.0f} GiB  bf16 {torch.cuda.is_bf16_supported()}")
EOF

ws="$(mktemp -d)"
trap 'rm -rf "$ws"' EXIT  # the scratch workspace (its run and predictions); the figures stay in $out
cd "$ws"
stamp() { python3 -c 'import time; print(f"{time.time():.3f}")'; }

t0=$(stamp)
cpx train "$recipe" --data "$data" --device "$device" --epochs "$epochs" --image-size "$size" --name gpu-check \
  --set train.budget_minutes=null --set train.patience=null --quiet | tee "$out/train.log"
t1=$(stamp)
cpx bench "$recipe" --data "$data" --device "$device" --image-size "$size" --json > "$out/bench.json"
t2=$(stamp)
cpx predict gpu-check --input "$data/test/images" --output "$ws/pred" --tta flip --device "$device" --json \
  > "$out/predict.json"
t3=$(stamp)

python3 - "$out" "$t0" "$t1" "$t2" "$t3" <<'EOF' | tee "$out/summary.txt"
import json, re, sys
out, t0, t1, t2, t3 = sys.argv[1], *map(float, sys.argv[2:])
log = open(f"{out}/train.log").read()
epochs = [(int(m[1]), float(m[2]), float(m[3])) for m in re.finditer(r"^epoch (\d+)/\d+ .*? ([\d.]+) img/s ([\d.]+)s", log, re.M)]
bench = json.load(open(f"{out}/bench.json"))
pred = json.load(open(f"{out}/predict.json"))
print("figure | value")
print("--- | ---")
for e, ips, sec in epochs:
    print(f"train epoch {e} (incl. validation) | {sec:.1f} s, {ips:.1f} images/s")
print(f"cpx train, whole command | {t1 - t0:.1f} s")
ips = bench["train_images_per_s"]
share = ips * bench["train_flops"] / bench["attainable_flops"]
print(f"bench training | {ips:.1f} images/s = {ips * bench['train_flops'] / 1e9:.1f} GFLOP/s, {share:.1%} of the "
      f"attainable {bench['attainable_flops'] / 1e12:.1f} TFLOP/s ({bench['precision']})")
print(f"bench prediction | {bench['predict_images_per_s']:.1f} images/s, {bench['predict_flip_images_per_s']:.1f} "
      "with flip TTA")
print(f"bench peak memory | {bench['peak_memory_bytes'] / 2**30:.2f} GiB ({bench['memory_kind']})")
n = len(pred.get("written", []))
print(f"predict {n} test images with flip TTA | {pred.get('seconds', 0):.1f} s ({n / max(pred.get('seconds', 1e-9), 1e-9):.1f} images/s)")
json.dump({"epochs": epochs, "train_seconds": t1 - t0, "bench": bench, "predict_seconds": pred.get("seconds")},
          open(f"{out}/summary.json", "w"), indent=1)
EOF
