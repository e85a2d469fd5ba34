#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (see ../shared/gpu/README.md): the CUDA tests, then training
# tokens/s, MFU and memory of baseline vs DIFF V2 (FSDP2, bf16, compile off/on) at two sizes, then how long
# a checkpoint stops training (blocking vs async), then KV-cache decoding of baseline vs DIFF V2 (bench.decode),
# then tensor parallel (bench.parallel): TP 2 vs DP 2 over NCCL when the machine has 2+ GPUs, else on its CPU
# cores with gloo (NCCL refuses two ranks on one GPU), then the LM head + loss at $LARGE's shape in bf16: whole
# logits vs the default fused chunked loss (bench.loss). The step limits add up to 540 s.
# Everything lands in $OUT: summary.txt, one log per step, throughput-*.json.
#
#   here, once:   ../shared/gpu/fetch-wheels.sh tokenizers tqdm    # Hydra, OmegaConf, data.prepare's needs
#   device:       run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=570)
#   CPU dry run:  SMALL=tiny LARGE=tiny SEQ=256 OUT=/tmp/gpu-dry bash bench/gpu.sh
#
# Each step has its own time limit, so one slow step cannot eat the others' time; the exit status is
# non-zero when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
SMALL=${SMALL:-125m}
LARGE=${LARGE:-1.3b}
SEQ=${SEQ:-2048}
mkdir -p "$OUT"

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target .site .whl/*.whl \
    || { echo "installing the carried wheels failed" | tee "$OUT/summary.txt"; exit 1; }
  export PYTHONPATH=$PWD/.site:$PWD
fi
export DIFFV2_DATA=${DIFFV2_DATA:-$PWD/.cache/data}

failed=0
step() {  # step NAME SECONDS COMMAND...: runs COMMAND with a time limit, logs to $OUT/NAME.log
  local name=$1 limit=$2 rc
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  {
    echo "== $name: exit $rc after $((SECONDS - start)) s (limit $limit s)"
    tail -n 14 "$OUT/$name.log"
  } >> "$OUT/summary.txt"
  [ "$rc" -eq 0 ] || failed=1
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
} > "$OUT/summary.txt" 2>&1

step prepare 40 python3 -m data.prepare data=stdlib_small
step cuda-tests 110 python3 -m pytest -q -p no:cacheprovider -m gpu \
  tests/model/test_cuda.py tests/model/test_kernel.py tests/data/test_loader.py tests/train/test_cuda.py
step "throughput-$SMALL" 130 python3 -m bench.throughput --sizes "$SMALL" --compile off on --steps 10 \
  --json "$OUT/throughput-$SMALL.json" --keep "$OUT/runs-$SMALL" \
  trainer.seq_len="$SEQ" trainer.micro_batch=8 trainer.global_batch_tokens=$((SEQ * 8))
step "throughput-$LARGE" 130 python3 -m bench.throughput --sizes "$LARGE" --compile on --steps 8 \
  --json "$OUT/throughput-$LARGE.json" --keep "$OUT/runs-$LARGE" \
  trainer.seq_len="$SEQ" trainer.micro_batch=4 trainer.global_batch_tokens=$((SEQ * 4))
step "checkpoint-$SMALL" 40 python3 -m bench.checkpoint model="$SMALL"
step "decode-$SMALL" 40 python3 -m bench.decode --size "$SMALL" --prompt $((SEQ / 4)) --new 128 --batches 1 8 \
  --repeats 2 --json "$OUT/decode-$SMALL.json"
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
  step "parallel-$SMALL" 30 python3 -m bench.parallel --layouts fsdp2 tp2 --steps 5 --json "$OUT/parallel.json" \
    model="$SMALL" trainer.device=cuda trainer.seq_len="$SEQ" trainer.micro_batch=4 trainer.global_batch_tokens=$((SEQ * 8))
else
  step parallel-cpu 30 python3 -m bench.parallel --layouts fsdp2 tp2 --steps 3 --json "$OUT/parallel.json" \
    model=micro trainer.device=cpu
fi
step "loss-$LARGE" 20 python3 -m bench.loss --shapes "$LARGE" --chunks 2048 --repeats 3
rm -rf "$OUT"/runs-*/*/checkpoints  # none are written (checkpoint.enabled=false); never ship weights back
cat "$OUT/summary.txt"
exit "$failed"
