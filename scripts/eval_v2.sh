#!/usr/bin/env bash
# lbnl-small v2 evaluation (issue 16), one core: held-out sources (dev for selection, test for report)
# and SciFact test, with the same settings as docs/results.md (BM25 top 20, 128 tokens per document).
#   bash scripts/eval_v2.sh [model dir] [tag]
set -e
cd "$(dirname "$0")/.."
MODEL=${1:-src/lbnl/checkpoints/weights/lbnl-small-v2}
TAG=${2:-v2}
RUN="taskset -c 1 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=$PWD/src lbnl eval --model $MODEL --dtype bfloat16 --top-k 20 --max-doc-length 128 --no-plot --quiet"
for split in dev test; do
  for s in manpages pydocs; do
    $RUN --data data/v2/heldout/$s --split $split --candidate-fusion 0.7 --output runs/eval/$TAG-$s-$split
  done
done
$RUN --data ${SCIFACT:-scifact} --split test --candidate-fusion 0.5,0.7 --output runs/eval/$TAG-scifact-test
