#!/usr/bin/env bash
# Every GPU table of BENCHMARKS.md, on the first CUDA device (`make bench-gpu`; about 10
# minutes on an H100). Arguments pick some of them by module name (`bash bench/gpu.sh flops
# bench_batch`). PY is the Python that has style-pipeline's dependencies. A bench that fails is
# reported and the others still run; the exit status says whether any failed.
set -u
PY=${PY:-.venv/bin/python}
picked=" $* "
failed=0
bench() {
    [[ $# -eq 0 || "$picked" == "  " || "$picked" == *" ${1#bench.} "* ]] || return 0
    echo; echo "\$ python -m $*"
    "$PY" -m "$@" || { echo "FAILED (exit $?): python -m $*"; failed=1; }
}
bench bench.flops --device cuda
bench bench.bench_graphs --device cuda --sizes 256,512 --batches 1,4,8 --profile 20
bench bench.bench_batch --device cuda --sizes 256,512 --batches 1,2,4,8
bench bench.bench_vs_pastiche --device cuda --size 512 --short 20 --long 1020 --rounds 1 \
    --variants 1,2,5,6
bench bench.bench_gram --device cuda --size 512 --batches 1,4
bench bench.bench_precision --device cuda
bench bench.bench_schedule --device cuda --size 512 --runs 1x500,2x1000,3x1500
bench bench.bench_quality --device cuda --size 512
bench bench.bench_memory --device cuda --block 1024 --regions 4
bench bench.bench_blocks --device cuda --size 2048 --blocks 1024,2048 --rounds 3
bench bench.bench_targets --device cuda  # ORT's CUDA and TensorRT rows need onnxruntime-gpu
bench bench.bench_continuous --device cuda --sizes 448,512 --batch 8 --configs 1,2
bench bench.bench_video --device cuda --speed --size 512
bench bench.bench_video_workers --devices "$(nvidia-smi --query-gpu=index --format=csv,noheader \
    | sed 's/^/cuda:/' | paste -sd,)" --size 512 --frames 24 --passes 4x40
exit $failed
