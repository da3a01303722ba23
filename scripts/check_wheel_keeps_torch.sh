#!/usr/bin/env bash
# Does `pip install lbnl-*.whl` keep the torch that a fresh environment already has?
#
#   scripts/check_wheel_keeps_torch.sh [TORCH_SPEC]        # default: torch==2.14.1
#
# 1. builds lbnl's sdist and, from it, the wheel (`python -m build`, pypa/build in a venv of its own);
# 2. makes a fresh virtual environment (no system site-packages) and installs TORCH_SPEC there;
# 3. installs the wheel the ordinary way (`pip install lbnl-*.whl`);
# 4. fails unless torch is exactly the same afterwards, `pip check` passes and lbnl reranks with that
#    torch (a tiny random checkpoint built from the vendored Qwen3 tokenizer);
# 5. uninstalls lbnl and asks pip, with no pip configuration at all (so no local cap on torch; the package
#    index offers newer torch releases), what `pip install --upgrade lbnl-*.whl` would install: it fails
#    unless that is lbnl alone (a dry run: nothing is installed).
#
# Wheels come from $LBNL_WHEELHOUSE (default ~/.cache/lbnl/wheelhouse). The first run fills it with
# `pip download` through pip's configured indexes; with OFFLINE=1 every install (and the build's own
# setuptools) comes from it alone (--no-index), so a filled wheelhouse needs no network. Step 5 needs
# the package index and is skipped with OFFLINE=1.
#
# Environment: PYTHON (default python3), WORK (scratch directory, default a new one under /tmp; removed
# unless KEEP=1), LBNL_WHEELHOUSE, OFFLINE=1, KEEP=1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TORCH_SPEC=${1:-torch==2.14.1}
PYTHON=${PYTHON:-python3}
WHEELHOUSE=${LBNL_WHEELHOUSE:-$HOME/.cache/lbnl/wheelhouse}
WORK=${WORK:-$(mktemp -d /tmp/lbnl-wheel-check.XXXXXX)}
unset PYTHONPATH PIP_REQUIRE_VIRTUALENV
[[ ${KEEP:-0} == 1 ]] || trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WHEELHOUSE" "$WORK"

say() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
offline=()
[[ ${OFFLINE:-0} == 1 ]] && offline=(--no-index)
from_wheelhouse=(--find-links "$WHEELHOUSE" "${offline[@]}")

say "build (sdist, then the wheel from it) with pypa/build in a virtual environment of its own"
if [[ ${OFFLINE:-0} == 1 ]]; then
    export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELHOUSE"    # build, and the build's isolated setuptools, from here
else
    run "$PYTHON" -m pip download --quiet --dest "$WHEELHOUSE" build "setuptools>=68" wheel
fi
run "$PYTHON" -m venv "$WORK/build-venv"
run "$WORK/build-venv/bin/python" -m pip install --quiet --disable-pip-version-check "${from_wheelhouse[@]}" build
# From a clean copy of the tree (tracked and new files, nothing ignored): setuptools would add to the sdist
# whatever an existing src/*.egg-info/SOURCES.txt lists.
mkdir -p "$WORK/src"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [[ -f $f ]] && printf '%s\0' "$f"; done | tar --null -cf - -T -) \
        | tar -C "$WORK/src" -xf -
else
    tar -C "$ROOT" --exclude='*.egg-info' --exclude=__pycache__ --exclude=./build --exclude=./dist --exclude=./.make \
        -cf - . | tar -C "$WORK/src" -xf -
fi
run "$WORK/build-venv/bin/python" -m build --outdir "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 \
    || { cat "$WORK/build.log"; exit 1; }
unset PIP_NO_INDEX PIP_FIND_LINKS
WHEEL=$(ls "$WORK"/dist/lbnl-*.whl)
ls -l "$WORK"/dist

say "fresh virtual environment with $TORCH_SPEC"
run "$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
VPIP=("$VPY" -m pip --disable-pip-version-check)
if [[ ${OFFLINE:-0} != 1 ]]; then
    # Everything both installs need, once: later runs and OFFLINE=1 runs take it from the wheelhouse.
    run "${VPIP[@]}" download --quiet --dest "$WHEELHOUSE" "$TORCH_SPEC" "$WHEEL"
fi
run "${VPIP[@]}" install --quiet "${from_wheelhouse[@]}" "$TORCH_SPEC"
before=$("${VPIP[@]}" list 2>/dev/null | grep -i torch)
echo "pip list | grep -i torch (before):"; echo "$before"

say "install the wheel"
run "${VPIP[@]}" install --quiet "${from_wheelhouse[@]}" "$WHEEL"
after=$("${VPIP[@]}" list 2>/dev/null | grep -i torch)
echo "pip list | grep -i torch (after):"; echo "$after"
run "${VPIP[@]}" check
if [[ "$before" != "$after" ]]; then
    echo "FAIL: installing the wheel changed torch" >&2
    exit 1
fi

say "lbnl reranks with that torch"
(cd "$WORK" && LBNL_CACHE="$WORK/cache" run "$VPY" - "$ROOT/tests/fixtures/qwen3" <<'EOF'
import sys
import tempfile
from pathlib import Path

import torch

import lbnl
from lbnl import Reranker
from lbnl.testing.checkpoints import build_random_checkpoint

assert Path(lbnl.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), lbnl.__file__
checkpoint = build_random_checkpoint(Path(tempfile.mkdtemp()) / "ckpt", tokenizer_dir=Path(sys.argv[1]))
results = Reranker.from_pretrained(checkpoint, device="cpu").rerank("green tea", ["green tea catechins", "basketball"])
print(f"lbnl {lbnl.__version__} from {Path(lbnl.__file__).parent}, torch {torch.__version__}:",
      [(r.index, round(r.relevance_score, 4)) for r in results])
EOF
)

if [[ ${OFFLINE:-0} != 1 ]]; then
    say "without any pip configuration (no local cap on torch), what would 'pip install --upgrade lbnl-*.whl' install?"
    run "${VPIP[@]}" uninstall --quiet --yes lbnl
    PIP_CONFIG_FILE=/dev/null run "${VPIP[@]}" install --dry-run --quiet --upgrade --report "$WORK/upgrade.json" \
        "$WHEEL"
    "$VPY" - "$WORK/upgrade.json" <<'EOF'
import json
import sys

install = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.load(open(sys.argv[1]))["install"]}
print("would install:", " ".join(f"{k}=={v}" for k, v in sorted(install.items())) or "nothing")
sys.exit("FAIL: an upgrade would change torch" if "torch" in install or "lbnl" not in install else 0)
EOF
fi

say "OK: $TORCH_SPEC kept"
