#!/bin/bash
# Build .carry/ (git-ignored) for one run on a GPU node: everything tests/gpu/device_run.sh needs
# on a GPU node that has torch and transformers but no TVM and cannot reach a package index.
# Run from the repo root on the build machine (no GPU needed): it needs TVM, pip and the data.
#   bash tests/gpu/bundle.sh            then, on the GPU node, with .carry/ copied beside the repo:
#   OUT=/path/to/results bash tests/gpu/device_run.sh
# 22-33 MB, and 7 MB more per revision's sets (FALLBACK_REV, OLD_REV); WITH_TRAIN=1 adds 21 MB
# (then set NO_DENSE=1 where the copy to the node is limited, e.g. to 64 MiB with the repo).
set -euo pipefail
DATA=${G2P_DATA:-../shared/charsiug2p-data}/data
PYV=${PYV:-3.12}   # the node's python3
C=.carry
rm -rf $C && mkdir -p $C/whl $C/data $C/gpu

# TVM as a runtime: the package minus its 250 MB compiler library (TVM_USE_RUNTIME_LIB=1 there)
SITE=$(python -c "import tvm, os; print(os.path.dirname(os.path.dirname(tvm.__file__)))")
(cd "$SITE" && tar cf - --exclude=__pycache__ --exclude=3rdparty --exclude=libtvm_compiler.so tvm) \
  | xz -T0 -6 > $C/tvm_runtime.tar.xz
FFI=$(python -c "import importlib.metadata as m; print(m.version('apache-tvm-ffi'))")
python -m pip download -q --no-deps --only-binary=:all: --python-version $PYV --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  -d $C/whl "apache-tvm-ffi==$FFI"

# data: the test split as is; with WITH_TRAIN=1 also train and dev (76 MB of text, 21 MB
# compressed) for device_run.sh's TRAIN_MINUTES stage
cp -r "$DATA/test" $C/data/
if [ "${WITH_TRAIN:-0}" = 1 ]; then
  (cd "$DATA" && tar cf - train dev) | xz -T0 -6 > $C/data/train_dev.tar.xz
fi

# CUDA artifact sets, cross-compiled here by the code of git revision $2 (the working tree when
# empty) into $1. Each keeps its params file: load_engine checks it against the manifest
# unless weights come from --checkpoint.
sets() {
  local dest=$1 rev=${2:-} src=$PWD A
  A=$(mktemp -d)
  if [ -n "$rev" ]; then src=$A/src && git worktree add -q --detach "$src" "$rev"; fi
  local G2P="env PYTHONPATH=$src python -P -m g2p_batch.cli"  # -P: not the cwd's g2p_batch
  mkdir -p $dest
  $G2P make-checkpoint --arch micro --seed 0 $dest/cuda_set/checkpoint
  $G2P compile --checkpoint $dest/cuda_set/checkpoint --target cuda --batch-sizes 8 --input-buckets 32,64 \
    --max-input-bytes 64 --max-output-len 24 --artifacts-dir $A/micro
  cp -r $A/micro/checkpoint/cuda-sm_90-out24 $dest/cuda_set/artifacts
  # the bench's tiny_8 sets take the node's own seeded weights (--checkpoint), so no params travel
  $G2P make-checkpoint --arch tiny_8 --seed 0 $A/tiny8
  for sizes in 1,1024 4096; do
    $G2P compile --checkpoint $A/tiny8 --target cuda --batch-sizes $sizes --input-buckets 32,64 \
      --max-input-bytes 64 --max-output-len 32 --artifacts-dir $A/t8_$sizes
    cp -r $A/t8_$sizes/tiny8/cuda-sm_90-out32 $dest/tiny8_b${sizes//,/_}
    rm $dest/tiny8_b${sizes//,/_}/params-*.safetensors
  done
  if [ -n "$rev" ]; then git worktree remove --force "$src"; fi
  rm -rf $A
}
sets $C/gpu
# FALLBACK_REV=<rev>: that revision's sets too, which device_run.sh switches to when the kernel
# check fails (a new kernel that is wrong then costs the parity tests, not the benches)
if [ -n "${FALLBACK_REV:-}" ]; then sets $C/gpu_fb "$FALLBACK_REV"; fi
# OLD_REV=<rev>: that revision's batch-1024 set, benched beside the new one for a before/after
if [ -n "${OLD_REV:-}" ]; then sets $C/old "$OLD_REV" && mkdir -p $C/gpu_old \
  && mv $C/old/tiny8_b1_1024 $C/gpu_old/ && rm -rf $C/old; fi
python tests/gpu/kernel_check.py build $C/kc  # the hand-scheduled kernels alone, checked first there
# NO_DENSE=1: without the candidate dense tiles (timed last there)
[ "${NO_DENSE:-0}" = 1 ] || python tests/gpu/dense_variants.py build $C/dv
du -sh $C
