#!/usr/bin/env bash
# Evaluation of a built-in model candidate (issue 16), one core per job: the held-out sources (dev for
# selection, test for the report) and SciFact test, with the settings of docs/results.md (BM25 top 20,
# 128 tokens per document). The raw model scores are stored, so scripts/fusion_rows.py can read fusion
# variants afterwards without the model.
#   bash scripts/eval_builtin.sh [model dir] [tag] [parts]
#   parts: any of dev, test, scifact (default: all three); CORE=0 pins to another core.
set -e
cd "$(dirname "$0")/.."
MODEL=${1:-src/lbnl/checkpoints/weights/lbnl-small-v2}
TAG=${2:-v2}
PARTS=${3:-dev,test,scifact}
RUN="taskset -c ${CORE:-1} env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=$PWD/src lbnl eval --model $MODEL --dtype bfloat16 --top-k 20 --max-doc-length 128 --no-plot --quiet"
for split in dev test; do
  [[ ",$PARTS," == *",$split,"* ]] || continue
  for s in manpages pydocs; do
    $RUN --data data/v2/heldout/$s --split $split --candidate-fusion 0.7 --output runs/eval/$TAG-$s-$split
  done
done
if [[ ",$PARTS," == *",scifact,"* ]]; then
  $RUN --data ${SCIFACT:-scifact} --split test --candidate-fusion 0.5,0.7 --output runs/eval/$TAG-scifact-test
fi
