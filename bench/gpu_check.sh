#!/usr/bin/env bash
# The GPU path checked in one go (issue 17), on a Linux machine with an NVIDIA GPU and Python
# 3.11 or 3.12, in under 8 minutes:
#
#   bench/gpu_check.sh                         # packages from a registry where one answers
#   bench/gpu_check.sh --wheels DIR            # ... or from wheels brought along
#   bench/gpu_check.sh --stage DIR --parts DIR # ... or from bench/gpu_stage.sh's parts
#   make gpu-check                             # the first form
#   bench/gpu_check.sh --unpack-only ...       # steps 2 and the import check alone (any machine)
#
# 1. nvidia-smi; Python and torch must see CUDA.
# 2. What is missing is installed into $SITE (default /tmp/site, first on PYTHONPATH): from the
#    staged archive (every part's SHA-256 checked against MANIFEST, joined, unpacked with xz or
#    Python's lzma), from --wheels, or with pip from a registry; the pins are bench/
#    gpu_packages.txt's [carry]. CUDA and cuDNN come from the machine (pip's nvidia-* packages,
#    put on LD_LIBRARY_PATH for the servers, or the system's).
# 3. The MNIST CNN trained on CUDA (bench/bench_gpu.py train; its time is recorded).
# 4. bench/bench_gpu.py serve: neuroserve --device cuda vs --device cpu vs raw ONNX Runtime on
#    CUDA vs the gRPC echo, c=1 and c=32 batch-1 requests, 256-row requests.
# 5. pytest -m gpu on the test files that hold gpu-marked tests.
# 6. The table goes into README.md between the gpu-check markers (after 4, again after 5); logs
#    and the README go to $OUT too when it is set (the device tool brings $OUT back).
# Each step has its own limit (180, 300 and 240 s), cut to what is left of BUDGET_S (480 s from
# the start: under 8 minutes wall, whatever hangs); about 5 minutes are expected on an H200.
#
# The device machine of this workplace (no registry, 64 MiB per call, warm 30 s between calls):
# run bench/gpu_stage.sh here first, then the calls it prints (README, "The GPU path"): every
# call but the last copies its part to /tmp/ns-stage; the last runs this script with
# --stage /tmp/ns-stage --parts .gpu-stage/callN. No Prefect or MLflow is needed there: training
# is called directly, and what a run records in MLflow is tested on the CPU.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
LOGS=${LOGS:-$ROOT/.neuroserve-bench/gpu-check}
PACKAGES=bench/gpu_packages.txt
STAGE_DIR="" PARTS_DIR="" WHEELS="" UNPACK_ONLY=""
while (($#)); do
    case "$1" in
    --stage) STAGE_DIR=$2; shift 2 ;;
    --parts) PARTS_DIR=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --unpack-only) UNPACK_ONLY=1; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (expected --stage DIR, --parts DIR, --wheels DIR," \
            "--unpack-only)" >&2
       exit 2 ;;
    esac
done
mkdir -p "$LOGS"
exec > >(tee "$LOGS/gpu-check.log") 2>&1
START=$SECONDS
BUDGET_S=${BUDGET_S:-480}
# Seconds a step may take: its own cap, or what is left of the budget (at least 10).
limit() { local left=$((BUDGET_S - (SECONDS - START) - 10)); echo $((left < $1 ? (left < 10 ? 10 : left) : $1)); }
step() { echo; echo "=== [$((SECONDS - START)) s] $*"; }
die() { echo "gpu_check.sh: $*" >&2; exit 1; }
section() { awk -v want="[$1]" '/^\[/{on=($0==want); next} on && NF && !/^#/' "$PACKAGES"; }

step "GPU"
if [[ -z "$UNPACK_ONLY" ]]; then
    command -v nvidia-smi >/dev/null || die "no nvidia-smi: this check needs an NVIDIA GPU and driver"
    nvidia-smi || die "nvidia-smi failed"
    GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
fi
"$PY" -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), sys.version' \
    || die "$PY is not Python 3.11 or 3.12"

step "packages into $SITE"
mkdir -p "$SITE"
if [[ -n "$PARTS_DIR" ]]; then
    [[ -f "$PARTS_DIR/MANIFEST" ]] || die "no $PARTS_DIR/MANIFEST (bench/gpu_stage.sh writes it)"
    PARTS_DIR=$(cd "$PARTS_DIR" && pwd)
    manifest="$PARTS_DIR/MANIFEST"
    STAGE_DIR=${STAGE_DIR:-$PARTS_DIR}
    mkdir -p "$STAGE_DIR"
    STAGE_DIR=$(cd "$STAGE_DIR" && pwd)
    cp "$PARTS_DIR"/part.* "$STAGE_DIR/" 2>/dev/null || true  # this call's own part(s)
    mapfile -t names < <(grep ' part\.' "$manifest" | awk '{print $2}')
    for name in "${names[@]}"; do
        [[ -f "$STAGE_DIR/$name" ]] || die "part $name is not in $STAGE_DIR: the machine went \
back between calls (warm 30 s); run every staging call again, one right after the other"
    done
    (cd "$STAGE_DIR" && grep ' part\.' "$manifest" | sha256sum --quiet -c -) \
        || die "a part does not match its SHA-256 in $manifest"
    if command -v xz >/dev/null; then
        (cd "$STAGE_DIR" && cat "${names[@]}") | xz -dc | tar -x -C "$SITE" || die "unpacking failed"
    else
        (cd "$STAGE_DIR" && cat "${names[@]}") \
            | "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer, 1 << 20)' \
            | tar -x -C "$SITE" || die "unpacking failed"
    fi
elif [[ -n "$WHEELS" ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" \
        "$WHEELS"/*.whl || die "installing the wheels in $WHEELS failed"
else
    mapfile -t carry < <(section carry)
    "$PY" -m pip install -q --no-deps --no-compile --upgrade --target "$SITE" "${carry[@]}" \
        || die "pip could not install ${carry[*]} (no registry? use --wheels DIR or --stage/--parts)"
fi
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# CUDA/cuDNN from pip's nvidia-* packages, for processes that do not import torch (the servers
# also preload them through onnxruntime.preload_dlls; this makes the dynamic loader agree).
NVLIBS=$("$PY" - <<'PYEOF'
import glob, os, site
dirs = set()
for base in site.getsitepackages():
    for lib in glob.glob(os.path.join(base, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
PYEOF
)
export LD_LIBRARY_PATH="${NVLIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
NEED_CUDA=$([[ -n "$UNPACK_ONLY" ]] && echo 0 || echo 1) "$PY" - <<'PYEOF' || die "the environment is not ready (above)"
import os
import onnxruntime as ort, torch, grpc, google.protobuf, pydantic, pydantic_settings, mlxtend
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
      f"{torch.backends.cudnn.version()}), GPU: {torch.cuda.is_available() and torch.cuda.get_device_name(0)}")
print(f"onnxruntime {ort.__version__} from {ort.__file__}; providers {ort.get_available_providers()}")
print(f"grpcio {grpc.__version__}, protobuf {google.protobuf.__version__}, pydantic {pydantic.VERSION}")
assert "CUDAExecutionProvider" in ort.get_available_providers(), "onnxruntime has no CUDA provider"
assert os.environ["NEED_CUDA"] != "1" or torch.cuda.is_available(), "torch sees no CUDA GPU"
PYEOF
[[ -n "$UNPACK_ONLY" ]] && { echo "gpu_check.sh: unpacked into $SITE"; exit 0; }

publish() {
    # The table into README.md between the markers, then everything to $OUT (after each stage,
    # so a run stopped at its time limit still brings back what it measured).
    "$PY" - "$LOGS/gpu-table.md" "$GPU" "$1" "$((SECONDS - START))" <<'PYEOF'
import datetime, pathlib, sys
table_path, gpu, pytest_line, seconds = sys.argv[1:5]
readme = pathlib.Path("README.md")
begin, end = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
text = readme.read_text()
if begin not in text or end not in text:
    sys.exit("README.md has no gpu-check markers")
table = pathlib.Path(table_path)
body = table.read_text() if table.is_file() else "(the serving benchmark wrote no table)\n"
when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
block = (
    f"{begin}\n"
    f"`bench/gpu_check.sh`, {when}, on {gpu} ({seconds} s); `pytest -m gpu`: {pytest_line}.\n\n"
    f"{body}{end}"
)
head, rest = text.split(begin, 1)
readme.write_text(head + block + rest.split(end, 1)[1])
print(block)
PYEOF
    if [[ -n "${OUT:-}" ]]; then
        cp README.md "$LOGS"/{gpu-check.log,pytest.log,train.json,serve.json,gpu-table.md} \
            "$OUT"/ 2>/dev/null || true
    fi
}

# Training and the serving table first: they are what the README needs; the tests follow.
step "train the MNIST CNN on CUDA"
timeout "$(limit 180)" "$PY" bench/bench_gpu.py train --device cuda --json "$LOGS/train.json" \
    || echo "training on CUDA failed (above); the serving bench uses the built CNN"

step "serving benchmark"
train_json=()
[[ -s "$LOGS/train.json" ]] && train_json=(--train-json "$LOGS/train.json")
timeout "$(limit 300)" "$PY" bench/bench_gpu.py serve --devices cuda,cpu "${train_json[@]}" \
    --markdown "$LOGS/gpu-table.md" --json "$LOGS/serve.json" || echo "the serving bench failed"
publish "not run yet"

step "pytest -m gpu"
mapfile -t gpu_tests < <(grep -rl --include='test_*.py' 'pytest.mark.gpu' tests | sort)
timeout "$(limit 240)" "$PY" -m pytest -q -m gpu -p no:cacheprovider "${gpu_tests[@]}" \
    2>&1 | tee "$LOGS/pytest.log"
PYTEST=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|skipped)' "$LOGS/pytest.log" | tail -1 \
    | tr -d '=' | sed 's/^ *//; s/ in [0-9.]*s.*$//; s/ *$//')
echo "pytest: ${PYTEST:-no summary (timed out?)}"

step "README"
publish "${PYTEST:-no summary (stopped at its time limit?)} (${gpu_tests[*]})"
echo "gpu_check.sh: done in $((SECONDS - START)) s"
