#!/usr/bin/env bash
# The wheels the GPU suite needs that the lent GPU machine lacks (it has torch, transformers, peft, lightning,
# safetensors...; see /work/.library/device/KINDS.md), for its Python (cp312, x86-64), in .whl/ (git-ignored),
# at the versions CI pins (.ci/constraints.txt). Prints their total size (the carry limit is 64 MiB with the
# working tree) and the device `run` call to use.
#   bash experiments/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
# CI's pin, else the version installed here (same resolver, same result)
pin() { grep -i "^$1==" .ci/constraints.txt | head -1 ||
        python3 -c "import importlib.metadata as m, sys; print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')" "$1"; }
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for package in diffusers hydra-core omegaconf optimum-quanto bitsandbytes torchao; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "$(pin "$package")"
done
# antlr4-python3-runtime (omegaconf's parser) is published as a source archive only: build its pure-Python wheel.
python3 -m pip wheel -q --no-deps -w .whl "$(pin antlr4-python3-runtime)"
ls -1 .whl
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -co --exclude-standard -z | python3 -c "import os, sys; print(sum(os.path.getsize(f) for f in sys.stdin.read().split(chr(0)) if f and os.path.isfile(f)))")
echo "wheels: $((wheels / 1048576)) MiB; working tree: $((tree / 1048576)) MiB; together $(((wheels + tree) / 1048576)) MiB of 64"
[ $((wheels + tree)) -lt $((64 * 1048576)) ] || { echo "over the 64 MiB carry limit" >&2; exit 1; }
cat <<'RUN'
device run: carry [".whl"], timeout_s 600, command:
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; python3 experiments/gpu_suite.py --out $OUT
RUN
