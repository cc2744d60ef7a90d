# tests/gpu/test_gpu_nogpu.sh - device 'cuda' with no usable GPU is a one-line error, on every
# machine: with CUDA_VISIBLE_DEVICES empty the runtime sees no device even where one is (and
# where none is, it fails the same way), so `dstrain train --set train.device=cuda` must exit 1
# with "device 'cuda': no CUDA GPU found (...)". Also: the binary says it was built with cuda.
# Usage: bash test_gpu_nogpu.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR [PROBE] [CKPT_COMPARE]
set -u
BIN=${1:?usage: test_gpu_nogpu.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
. "$SRC/tests/cli/lib.sh"

export CUDA_VISIBLE_DEVICES=
expect_error "device 'cuda': no CUDA GPU found" train "$SRC/configs/tiny.toml" --set train.device=cuda \
    --set train.run_dir=runs --set data.dir=data --set train.steps=1
expect_error "device 'cuda': no CUDA GPU found" train "$SRC/configs/tiny.toml" --set train.device=cuda \
    --set train.precision=bf16 --set train.run_dir=runs --set data.dir=data --set train.steps=1
"$BIN" --help > help.txt 2>&1
check "the build line names cuda ($(grep 'built with' help.txt))" "grep 'built with' help.txt | grep -q cuda"
finish
