#!/bin/bash
# One run on a GPU node, from the repo root, with .carry/ from tests/gpu/bundle.sh: the CUDA
# parity tests (beside an optional training stage, which they barely load), then the GPU
# benches on an otherwise idle GPU. Each step has its own timeout; everything is logged to
# $OUT/log.txt, and results land in $OUT (kept to at most 8 files).
#   TRAIN_MINUTES=4.6  also continue the default checkpoint's training for that long (the
#                      MODEL_CARD's stage 4; bundle with WITH_TRAIN=1); its weights come back
#                      as $OUT/model.safetensors
set -u
export PYTHONUNBUFFERED=1 TVM_USE_RUNTIME_LIB=1
TRAIN_MINUTES=${TRAIN_MINUTES:-0}
exec > >(tee -a "$OUT/log.txt") 2>&1
t() { echo "== [$SECONDS s] $*"; }

t setup
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/whl/*.whl || exit 1
tar xJf .carry/tvm_runtime.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/data/data && cp -r .carry/data/test /tmp/data/data/
[ "$TRAIN_MINUTES" != 0 ] && tar xJf .carry/data/train_dev.tar.xz -C /tmp/data/data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import tvm, torch, transformers; print('tvm', tvm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
G2P="python3 -m g2p_batch.cli"

if [ "$TRAIN_MINUTES" != 0 ]; then
  t "training starts (background, $TRAIN_MINUTES min)"
  ( timeout $(python3 -c "print(int($TRAIN_MINUTES * 60 + 60))") python3 -m g2p_batch train \
      --data /tmp/data/data/train --dev /tmp/data/data/dev --out /tmp/train --init g2p_batch/checkpoints/g2p_tiny_3_1 \
      --arch tiny_3_1 --epochs 100 --batch-size 512 --lr 6e-4 --warmup-steps 300 --dropout 0.0 \
      --max-minutes $TRAIN_MINUTES --time-aware-schedule --log-every 500 --device cuda --seed ${TRAIN_SEED:-5} \
      --save-dtype float16 --lang-balance 0.5 > /tmp/train.log 2>&1
    echo "training exit $?" >> /tmp/train.log ) &
  TRAIN=$!
fi

t "kernel check"  # which hand-scheduled kernel is wrong, if one is, before the model-level tests
SETS=.carry/gpu
if ! timeout 60 python3 tests/gpu/kernel_check.py run .carry/kc && [ -d .carry/gpu_fb ]; then
  SETS=.carry/gpu_fb; t "a kernel is wrong: the tests and benches run the fallback sets (FALLBACK_REV)"
fi

if [ -d .carry/dv ]; then
  t "dense tiles"  # every candidate of g2p_batch/cuda_rules.py on tiny_8's shapes, checked and timed
  timeout 200 python3 tests/gpu/dense_variants.py run .carry/dv "$OUT/dense_variants.json" | tail -20
fi

t "tests/gpu"
# the bench's seeded tiny_8 (the same bytes as the one its sets were compiled from)
$G2P make-checkpoint --arch tiny_8 --seed 0 /tmp/tiny8 >/dev/null
mkdir -p /tmp/large && ln -sfn /tmp/tiny8 /tmp/large/checkpoint && ln -sfn "$PWD/$SETS/tiny8_b1_1024" /tmp/large/artifacts
# with nvcc hidden from PATH: the sets' shipped device code must serve this GPU by itself
NO_NVCC_PATH=$(echo "$PATH" | tr ':' '\n' | grep -v -i cuda | paste -sd: -)
G2P_CUDA_SET=$SETS/cuda_set G2P_CUDA_LARGE_SET=/tmp/large G2P_DATA=/tmp/data PATH=$NO_NVCC_PATH timeout 240 \
    python3 -m pytest -q -p no:cacheprovider tests/gpu -rA 2>&1 | tail -25

if [ "$TRAIN_MINUTES" != 0 ]; then
  t "waiting for training"
  wait $TRAIN  # a bare `wait` would also wait for the tee above, forever
  tail -30 /tmp/train.log
  cp /tmp/train.log /tmp/train/model.safetensors /tmp/train/training_summary.json "$OUT/"
fi

# one timed pass per engine: device time is scarce, and the GPU is not shared
common="--device cuda --checkpoint /tmp/tiny8 --data /tmp/data/data/test --threads 16 --cache-dir /tmp/bc --rounds 1"
t "bench tiny_8, batch 1024"
timeout 150 $G2P bench $common --artifacts $SETS/tiny8_b1_1024 --words 20480 --batch 1024 \
    --engines tvm,transformers --latency-runs 10 --out /tmp/b1024 && cp /tmp/b1024/bench.json "$OUT/b1024.json"
t "bench tiny_8, batch 4096 (no batch-1 module, so no latency)"
timeout 95 $G2P bench $common --artifacts $SETS/tiny8_b4096 --words 40960 --batch 4096 \
    --engines tvm,transformers --latency-runs 2 --out /tmp/b4096 && cp /tmp/b4096/bench.json "$OUT/b4096.json"
# the previous build, for a before/after on the same card: .carry/gpu_old, else the fallback sets
OLD=.carry/gpu_old
[ -d $OLD ] || { [ "$SETS" != .carry/gpu_fb ] && [ -d .carry/gpu_fb ] && OLD=.carry/gpu_fb; }
for run in "1024 1_1024 20480" "4096 4096 40960"; do
  read -r b set_ words <<< "$run"
  [ -d $OLD/tiny8_b$set_ ] || continue
  t "bench tiny_8, batch $b, previous build ($OLD, TVM only)"
  timeout 90 $G2P bench $common --artifacts $OLD/tiny8_b$set_ --words $words --batch $b \
      --engines tvm --latency-runs 2 --out /tmp/b${b}_old && cp /tmp/b${b}_old/bench.json "$OUT/b${b}_old.json"
done
t "profile, batch 1024"
timeout 60 $G2P bench $common --artifacts $SETS/tiny8_b1_1024 --words 20480 --batch 1024 --engines tvm \
    --profile --out /tmp/prof | head -40 && cp /tmp/prof/profile.json "$OUT/profile.json"
# where the 50k words/s target is measured; not beside training, whose 3 files would take $OUT
# past 8 files
if [ "$TRAIN_MINUTES" = 0 ]; then
  t "profile, batch 4096"
  timeout 60 $G2P bench $common --artifacts $SETS/tiny8_b4096 --words 40960 --batch 4096 --engines tvm \
      --profile --out /tmp/prof4096 | head -40 && cp /tmp/prof4096/profile.json "$OUT/profile-b4096.json"
fi
t done
