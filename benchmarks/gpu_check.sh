#!/usr/bin/env bash
# benchmarks/gpu_check.py on the GPU machine, in one call (the device tool's `run`, carry: [".whl"]):
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options]
#
# Installs the wheels benchmarks/gpu_wheels.sh put in .whl/ (the device README's install line),
# takes numpy 1.26.4 (RecBole 1.2.1's) where the machine's torch, pandas, scipy and scikit-learn
# import with it, else keeps the machine's numpy 2 (gpu_check then gives RecBole the three numpy
# 1 aliases it reads), and writes the results and the whole log into $OUT.
cd "$(dirname "$0")/.." || exit
out=${OUT:-/tmp/gpu_check_out}
mkdir -p "$out"
log="$out/gpu_check.log"
pip=(python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade)
"${pip[@]}" --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
export PYTHONUNBUFFERED=1
probe='import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import numpy, torch, pandas, scipy.sparse, sklearn.metrics
    torch.from_numpy(numpy.ones(2))
bad = [str(w.message) for w in caught if "numpy" in str(w.message).lower()]
assert not bad, bad[0][:300]
print("numpy", numpy.__version__, "imports with torch, pandas, scipy, scikit-learn")'
if "${pip[@]}" --target /tmp/site-numpy1 .whl/numpy1/*.whl >>"$log" 2>&1 &&
    PYTHONPATH=/tmp/site-numpy1:$PYTHONPATH python3 -c "$probe" >>"$log" 2>&1; then
    export PYTHONPATH=/tmp/site-numpy1:$PYTHONPATH
else
    echo "numpy 1.26.4 refused here (see above): the machine's numpy" | tee -a "$log"
fi
python3 benchmarks/gpu_check.py --device cuda --data-archive .whl/ml-1m.tar.xz --out-dir "$out" \
    "$@" 2>&1 | tee -a "$log"
