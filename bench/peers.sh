#!/usr/bin/env bash
# neuroserve beside the servers it is compared with, in ONE perf_analyzer run (issue #12).
#
# Copies the peer harness (../shared/peer-bench: Triton's perf_analyzer, a bare grpc.aio echo,
# a naive grpc.aio + ORT server, MLServer 1.7, PyTriton 0.7; see its README.md) to a writable
# work dir, applies bench/peers_harness.patch (HTTP and streaming protocols per server, a
# table of extra servers, a hook for extra models, MLServer's REST model config), builds or
# reuses its venvs, and runs it with neuroserve as one more server, on two models:
#   cnn    the harness's seeded copy of the seed's example CNN
#   mnist  the MNIST CNN the project trains (`neuroserve train cnn --data mnist`, trained once
#          into a throwaway NEUROSERVE_HOME and kept in the work dir; MNIST_ONNX=path skips it)
#
#   bash bench/peers.sh                                 # gRPC unary, 2 passes, c = 1 and 32
#   MODES="grpc stream http" bash bench/peers.sh        # every goal of issue #12 in one run
#   SERVERS="floor-echo neuroserve" REPEATS=1 WINDOW_MS=1000 bash bench/peers.sh   # smoke
#
# Modes (MODES, any of):
#   grpc    floor-echo floor-ort mlserver-batch pytriton pytriton-nodelay neuroserve
#   stream  neuroserve-stream (the same server, perf_analyzer --streaming: ModelStreamInfer)
#   http    http-echo (bench/http_echo.py: bare ASGI echo on uvicorn, the HTTP stack neuroserve
#           serves REST on), mlserver-batch-http (MLServer's REST port; JSON tensors, MLServer
#           has no binary tensor extension), pytriton-nodelay-http (binary), neuroserve-http
#           (binary; needs `serving --http-port`, skipped with a note until it exists)
# SERVERS overrides the list (names above, in run order). Every other knob of the harness's
# run_all.sh passes through (REPEATS, WINDOW_MS, CONCURRENCIES, SERVER_CPUS, CLIENT_CPUS, ...).
#
# Other settings (environment):
#   MODELS          models served and measured           (default: cnn mnist)
#   CONCURRENCIES   perf_analyzer concurrency levels     (default: 1 32, what the goals name)
#   PEERS_WORK      work dir: harness copy, venvs, runs  (default: bench/.peers, git-ignored)
#   HARNESS_SRC     the read-only harness                (default: ../shared/peer-bench)
#   MNIST_ONNX      use this ONNX file as `mnist` instead of training one
#   RETRAIN=1       train the MNIST CNN again even if the work dir has one
#   NEUROSERVE_ARGS extra flags for every neuroserve start (e.g. --max-queue-delay-us 200)
#   BASELINE_REF    a git ref (e.g. 309db3e, main before issue #12): its serving/ runs as
#                   neuroserve-base in grpc mode, so "no worse than before" is one run too
#   RESULTS         results file                         (default: $PEERS_WORK/results.md)
#
# Writes $RESULTS: the harness's table (median over passes, CPU accounting, the machine-speed
# probe, every point) with a "Goals" section on top (bench/peers_ratios.py), and keeps every
# log, CSV and per-point JSON in $PEERS_WORK/runs/<UTC timestamp>/.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=$REPO/.venv/bin/python
HARNESS_SRC=${HARNESS_SRC:-$REPO/../shared/peer-bench}
WORK=${PEERS_WORK:-$REPO/bench/.peers}
H=$WORK/harness
export VENVS=${VENVS:-$WORK/venvs}
export MODELS=${MODELS:-cnn mnist}
export CONCURRENCIES=${CONCURRENCIES:-1 32}
MODES=${MODES:-grpc}
export RUN_DIR=${RUN_DIR:-$WORK/runs/$(date -u +%Y%m%dT%H%M%SZ)}
export RESULTS=${RESULTS:-$WORK/results.md}

say() { echo "[peers $(date +%H:%M:%S)] $*"; }
die() { echo "peers.sh: $*" >&2; exit 1; }

[ -x "$PY" ] || die "no project venv at $PY (make the venv first: see README)"
[ -f "$HARNESS_SRC/run_all.sh" ] || die "no peer harness at $HARNESS_SRC (set HARNESS_SRC)"
for m in $MODES; do
  case $m in grpc | stream | http) ;; *) die "MODES: unknown mode '$m'; expected grpc, stream, http" ;; esac
done
mkdir -p "$WORK" "$RUN_DIR"

# ---------------------------------------------------------------- the harness, patched
# A fresh copy every run, so a change to the shared harness shows up (or the patch fails
# loudly); venvs, runs and the trained model live beside it and are kept.
say "copying $HARNESS_SRC to $H and applying bench/peers_harness.patch"
rm -rf "$H"
cp -r "$HARNESS_SRC" "$H"
chmod -R u+w "$H"
patch -p1 -s --batch --no-backup-if-mismatch -d "$H" < "$REPO/bench/peers_harness.patch" \
  || die "bench/peers_harness.patch does not apply to $HARNESS_SRC: the harness changed; redo the patch"
grep -q EXTRA_SERVERS_FILE "$H/run_all.sh" || die "the patch left $H/run_all.sh unchanged"

# ---------------------------------------------------------------- the MNIST CNN
MNIST=$WORK/mnist-cnn.onnx
if [[ " $MODELS " == *" mnist "* ]]; then
  if [ -n "${MNIST_ONNX:-}" ]; then
    [ -f "$MNIST_ONNX" ] || die "MNIST_ONNX=$MNIST_ONNX is not a file"
    MNIST=$MNIST_ONNX
  elif [ ! -f "$MNIST" ] || [ "${RETRAIN:-0}" = 1 ]; then
    home=$WORK/train-home
    say "training the MNIST CNN (neuroserve train cnn --data mnist --seed 42) into $home"
    rm -rf "$home"
    mkdir -p "$home"
    NEUROSERVE_HOME=$home MLFLOW_TRACKING_URI="" "$REPO/.venv/bin/neuroserve" train cnn \
      --data mnist --seed 42 > "$WORK/train.log" 2>&1 || die "training failed: see $WORK/train.log"
    mapfile -t found < <(find "$home/mlartifacts" -name model.onnx)
    [ "${#found[@]}" = 1 ] || die "expected one model.onnx under $home/mlartifacts, found ${#found[@]}"
    cp "${found[0]}" "$MNIST"
    grep -E "^mnist-cnn v[0-9]+ ->" "$WORK/train.log" | sed 's/^/    /' || true
  else
    say "reusing the trained MNIST CNN $MNIST (RETRAIN=1 trains it again)"
  fi
fi

# the harness runs this after make_models.py: adds mnist, writes neuroserve's repository
ADD=""
[[ " $MODELS " != *" mnist "* ]] || ADD="--add 'mnist=$MNIST'"
export MODELS_HOOK="'$VENVS/harness/bin/python' '$REPO/bench/peers_models.py' \
--models-dir '$H/models' $ADD --repo '$WORK/repo' --models $MODELS"

# ---------------------------------------------------------------- the servers
HELP=$("$PY" -m serving --help 2>&1) || die "'$PY -m serving --help' failed: $HELP"
HAS_HTTP=0
grep -q -- "--http-port" <<< "$HELP" && HAS_HTTP=1
NS="$PY -m serving --model-repository $WORK/repo --metrics-port -1 --intra-op-threads {threads} --inter-op-threads 1 ${NEUROSERVE_ARGS:-}"
NS_NOHTTP=""
[ "$HAS_HTTP" = 1 ] && NS_NOHTTP="--http-port -1"
ECHO_STACK=$("$PY" -c 'import uvicorn, importlib.util as u; print(f"uvicorn {uvicorn.__version__} + " + ("httptools" if u.find_spec("httptools") else "h11 (httptools not installed)"))')

BASE_CMD=""
if [ -n "${BASELINE_REF:-}" ]; then
  sha=$(git -C "$REPO" rev-parse --short "$BASELINE_REF^{commit}") || die "BASELINE_REF=$BASELINE_REF is not a commit"
  base_dir=$WORK/baseline/$sha
  if [ ! -d "$base_dir/serving" ]; then  # git archive: a read of the repository, no worktree
    mkdir -p "$base_dir"
    git -C "$REPO" archive --format=tar "$sha" serving | tar -x -C "$base_dir"
  fi
  # env -C: `python -m serving` imports serving/ from the current directory, ahead of the
  # editable install of this checkout; exec keeps the PID the harness stops
  BASE_CMD="env -C $base_dir $PY -m serving --model-repository $WORK/repo --metrics-port -1 --intra-op-threads {threads} --inter-op-threads 1 --grpc-port 8541 ${NEUROSERVE_ARGS:-}"
fi

# name base proto port ports expect desc cmd (tab-separated; the patched run_all.sh reads it)
export EXTRA_SERVERS_FILE=$RUN_DIR/extra-servers.tsv
{
  printf '%s\t-\tgrpc\t8501\t8501\tgolden\t%s\t%s\n' neuroserve \
    "neuroserve (this checkout), gRPC unary, defaults except ORT intra_op=${ORT_THREADS:-1}, inter_op=1${NEUROSERVE_ARGS:+, $NEUROSERVE_ARGS}" \
    "$NS --grpc-port 8501 $NS_NOHTTP"
  if [ -n "$BASE_CMD" ]; then
    printf '%s\t-\tgrpc\t8541\t8541\tgolden\t%s\t%s\n' neuroserve-base \
      "neuroserve at $BASELINE_REF ($sha), same flags as neuroserve" "$BASE_CMD"
  fi
  printf '%s\tneuroserve\tgrpc-stream\t8501\t8501\tgolden\t%s\t-\n' neuroserve-stream \
    "neuroserve as above, measured with perf_analyzer --streaming (ModelStreamInfer)"
  printf '%s\t-\thttp\t8522\t8521 8522\tgolden\t%s\t%s\n' neuroserve-http \
    "neuroserve REST (KServe v2, binary tensor extension)" \
    "$NS --grpc-port 8521 --http-port 8522"
  printf '%s\t-\thttp\t8121\t8121\tzeros\t%s\t%s\n' http-echo \
    "bench/http_echo.py: bare ASGI v2 echo on $ECHO_STACK, asyncio loop, answers zeros, no model (HTTP floor)" \
    "$PY $REPO/bench/http_echo.py --port 8121 --models-dir {models_dir} --models {models}"
  for peer in mlserver mlserver-batch; do
    case $peer in mlserver) p=8201 ;; *) p=8211 ;; esac
    printf '%s\t%s\thttp-json\t%s\t%s %s %s\tgolden\t%s\t-\n' "$peer-http" "$peer" "$((p + 1))" \
      "$p" "$((p + 1))" "$((p + 2))" "the $peer server, on its REST port with JSON tensors (MLServer has no binary tensor extension)"
  done
  for peer in pytriton pytriton-nodelay; do
    case $peer in pytriton) p=8401 ;; *) p=8411 ;; esac
    printf '%s\t%s\thttp\t%s\t%s %s\tgolden\t%s\t-\n' "$peer-http" "$peer" "$((p + 1))" \
      "$p" "$((p + 1))" "the $peer server, on its HTTP port with binary tensors"
  done
} > "$EXTRA_SERVERS_FILE"

if [ -z "${SERVERS:-}" ]; then
  SERVERS=""
  for m in $MODES; do
    case $m in
      grpc)
        SERVERS+=" floor-echo floor-ort mlserver-batch pytriton pytriton-nodelay neuroserve"
        if [ -n "$BASE_CMD" ]; then SERVERS+=" neuroserve-base"; fi ;;
      stream) SERVERS+=" neuroserve-stream" ;;
      http) SERVERS+=" http-echo mlserver-batch-http pytriton-nodelay-http neuroserve-http" ;;
    esac
  done
fi
if [ "$HAS_HTTP" = 0 ] && [[ " $SERVERS " == *" neuroserve-http "* ]]; then
  say "neuroserve has no --http-port yet: neuroserve-http left out of this run"
  SERVERS=$(tr ' ' '\n' <<< "$SERVERS" | grep -vx neuroserve-http | tr '\n' ' ')
fi
SERVERS=$(xargs <<< "$SERVERS")
export SERVERS

say "models: $MODELS; servers: $SERVERS; concurrencies: $CONCURRENCIES; passes: ${REPEATS:-2}; run dir: $RUN_DIR"
bash "$H/run_all.sh"

# ---------------------------------------------------------------- the goals, on top
MNIST_NOTE=""
if [[ " $MODELS " == *" mnist "* ]]; then
  MNIST_NOTE="mnist = $MNIST"
  [ "$MNIST" != "$WORK/mnist-cnn.onnx" ] \
    || MNIST_NOTE="mnist = the MNIST CNN trained by \`neuroserve train cnn --data mnist --seed 42\` (defaults; log: $WORK/train.log)"
fi
"$PY" "$REPO/bench/peers_ratios.py" --run-dir "$RUN_DIR" --results "$RESULTS" --note "$MNIST_NOTE"
cp "$RESULTS" "$RUN_DIR/results.md"
say "results: $RESULTS (run dir $RUN_DIR)"
