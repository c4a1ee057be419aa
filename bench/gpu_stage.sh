#!/usr/bin/env bash
# Stage what bench/gpu_check.sh needs on a GPU machine that reaches no package registry and takes
# at most 64 MiB per command (this workplace's device machine: README "The GPU path").
#
#   bench/gpu_stage.sh              # here, with a registry: download, install, pack, split
#   bench/gpu_stage.sh --simulate   # then: the check's CPU half in an environment of exactly
#                                   # the device image's packages plus the staged ones
#   bench/gpu_stage.sh --take DIR   # after the device calls: the GPU section of DIR/README.md
#                                   # (what the last call brought back) into README.md
#
# 1. `pip download` the [carry] wheels of bench/gpu_packages.txt for CPython 3.12 manylinux
#    x86_64 into .gpu-stage/wheels (git-ignored through .git/info/exclude).
# 2. `pip install --target .gpu-stage/site` them (pure unpacking: no compiler, no scripts, no
#    .pyc), so the device machine needs no pip run at all, only xz and tar.
# 3. One tar of that tree, compressed with xz -9e and a 256 MiB dictionary (onnxruntime-gpu's
#    CUDA provider library, 284 MB, is most of it: 231 MB in the wheel's deflate, 185 MB here,
#    the same as zstd -19 --long=31; xz because Python's own lzma module can undo it where the
#    xz tool is missing).
# 4. Split into parts of PART_MIB = 64 MiB - (the working tree that travels) - 2 MiB, one part
#    per folder .gpu-stage/callN: each device call carries one folder (`carry`), the earlier
#    calls copy theirs to /tmp/ns-stage on the device, the last runs bench/gpu_check.sh, which
#    checks every part's SHA-256 against .gpu-stage/callN/MANIFEST, joins and unpacks them.
# 5. Print the call sequence (also written to .gpu-stage/CALLS.md).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STAGE=.gpu-stage
PACKAGES=bench/gpu_packages.txt
PY=${PY:-.venv/bin/python}
LIMIT_MIB=64
PLATFORMS=(--python-version 3.12 --implementation cp --only-binary=:all:)
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1 manylinux_2_5 \
    manylinux_2_24 manylinux_2_31 manylinux_2_34; do
    PLATFORMS+=(--platform "${tag}_x86_64")
done

section() { awk -v want="[$1]" '/^\[/{on=($0==want); next} on && NF && !/^#/' "$PACKAGES"; }

simulate() {
    # The device image's packages (by name) plus the staged ones, from this machine's own
    # installs (CPython 3.11 here: the names are what is checked, not the builds), nothing else.
    local sim=/tmp/ns-gpu-sim
    rm -rf "$sim" && mkdir -p "$sim/site"
    "$PY" - "$sim/site" "$PACKAGES" <<'PYEOF'
import importlib.metadata as md, os, re, sys
target, packages = sys.argv[1], sys.argv[2]
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
allowed, section = set(), None
for line in open(packages):
    line = line.strip()
    if line.startswith("["):
        section = line
    elif line and not line.startswith("#") and section in ("[carry]", "[device]"):
        allowed.add(norm(line.split("==")[0]))
linked = set()
for dist in md.distributions():
    if norm(dist.metadata["Name"]) not in allowed or norm(dist.metadata["Name"]) in linked:
        continue
    linked.add(norm(dist.metadata["Name"]))
    for top in {str(f).split("/")[0] for f in dist.files or []}:
        src = os.path.join(str(dist.locate_file("")), top)
        dst = os.path.join(target, top)
        if top not in ("..", "__pycache__") and os.path.exists(src) and not os.path.exists(dst):
            os.symlink(src, dst)
carry = {norm(l.split("==")[0]) for l in open(packages) if "==" in l and not l.startswith("#")}
lacking = sorted(carry - linked)
print(f"simulated site: {len(linked)} distributions linked ({len(allowed - linked)} of the "
      f"device's are not installed here); staged packages missing here: {lacking or 'none'}")
PYEOF
    # -S: no site-packages of the interpreter itself; torch comes from the farm like the rest.
    local run=(env -i PATH="$PATH" HOME="$HOME" PYTHONPATH="$sim/site:$ROOT" "$(readlink -f "$PY")" -S)
    "${run[@]}" -c "import serving.server, serving.cli, training.run, training.export, bench" \
        && echo "imports: ok"
    "${run[@]}" -m serving --help >/dev/null && echo "python -m serving --help: ok"
    "${run[@]}" -m pytest -q -m gpu -p no:cacheprovider --collect-only \
        $(grep -rl --include='test_*.py' 'pytest.mark.gpu' tests) | tail -1
    "${run[@]}" bench/bench_gpu.py train --device cpu --data digits --epochs 1 \
        --out "$sim/digits.onnx" --json "$sim/train.json" >/dev/null && echo "bench_gpu train: ok"
    "${run[@]}" bench/bench_gpu.py serve --devices cuda,cpu --rounds 1 --duration 0.5 \
        --warmup 0.2 --large 32 --large-concurrency 1 --raw-calls 200 --train-json "$sim/train.json" \
        2>/dev/null | grep -E "^\| (neuroserve|c=1|rows)" && echo "bench_gpu serve: ok"
}

take() {
    # Only the block between the markers: the rest of README.md may have moved on meanwhile.
    "$PY" - "$1/README.md" <<'PYEOF'
import pathlib, sys
begin, end = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
theirs = pathlib.Path(sys.argv[1]).read_text()
block = begin + theirs.split(begin, 1)[1].split(end, 1)[0] + end
ours = pathlib.Path("README.md")
text = ours.read_text()
head, rest = text.split(begin, 1)
ours.write_text(head + block + rest.split(end, 1)[1])
print(block)
PYEOF
}

case "${1:-}" in
--simulate) simulate; exit 0 ;;
--take) take "${2:?--take DIR: the folder the device call brought its files back to}"; exit 0 ;;
"") ;;
*) echo "gpu_stage.sh: unknown argument $1 (expected --simulate or --take DIR)" >&2; exit 2 ;;
esac

exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF "/$STAGE/" "$exclude" 2>/dev/null || echo "/$STAGE/" >>"$exclude"
rm -rf "$STAGE" && mkdir -p "$STAGE/wheels"

echo "== download (cp312 manylinux x86_64, no dependencies: bench/gpu_packages.txt names them)"
mapfile -t carry < <(section carry)
"$PY" -m pip download -q --no-deps "${PLATFORMS[@]}" -d "$STAGE/wheels" "${carry[@]}"
du -b "$STAGE"/wheels/*.whl | sort -n | awk '{printf "  %8.1f MiB  %s\n", $1/1048576, $2}'

echo "== unpack into $STAGE/site"
"$PY" -m pip install -q --no-deps --no-index --no-compile --target "$STAGE/site" \
    "${PLATFORMS[@]}" "$STAGE"/wheels/*.whl
find "$STAGE/site" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$STAGE/site/bin"
echo "  $(du -sm "$STAGE/site" | cut -f1) MiB unpacked"

echo "== pack (xz -9e, 256 MiB dictionary: a few minutes)"
start=$SECONDS
tar -C "$STAGE/site" --sort=name --owner=0 --group=0 --numeric-owner -cf - . \
    | xz -9e -T1 --lzma2=preset=9e,dict=256MiB >"$STAGE/site.tar.xz"
archive=$(stat -c %s "$STAGE/site.tar.xz")
echo "  $((archive / 1048576)) MiB in $((SECONDS - start)) s"

tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
    | awk '{s+=$1} END {print s}')
tree_mib=$(((tree + 1048575) / 1048576))
part_mib=$((LIMIT_MIB - tree_mib - 2))
echo "== split: the working tree weighs $((tree / 1024)) KiB, so parts of $part_mib MiB"
split -b "${part_mib}M" -d -a 2 "$STAGE/site.tar.xz" "$STAGE/part."
parts=("$STAGE"/part.*)
calls=${#parts[@]}
for i in "${!parts[@]}"; do
    n=$((i + 1))
    mkdir -p "$STAGE/call$n"
    mv "${parts[$i]}" "$STAGE/call$n/"
done
(cd "$STAGE" && sha256sum call*/part.* | sed 's#call[0-9]*/##' >"call$calls/MANIFEST")
sha256sum "$STAGE/site.tar.xz" | sed "s#$STAGE/##" >>"$STAGE/call$calls/MANIFEST"
rm -f "$STAGE/site.tar.xz"

{
    echo "# Device calls for this staging ($(date -u +%Y-%m-%dT%H:%MZ), $calls calls)"
    echo
    for n in $(seq 1 "$calls"); do
        size=$(du -cb "$STAGE/call$n"/* | tail -1 | cut -f1)
        mib=$(awk -v s="$size" -v t="$tree" 'BEGIN {printf "%.1f", (s + t) / 1048576}')
        echo "call $n: carry [\"$STAGE/call$n\"] ($mib MiB with the tree)"
        if ((n < calls)); then
            echo "  command: mkdir -p /tmp/ns-stage && cp $STAGE/call$n/part.* /tmp/ns-stage/ && ls -l /tmp/ns-stage && nvidia-smi -L"
            echo "  timeout_s: 120"
        else
            echo "  command: bash bench/gpu_check.sh --stage /tmp/ns-stage --parts $STAGE/call$n"
            echo "  timeout_s: 600"
        fi
    done
} | tee "$STAGE/CALLS.md"
