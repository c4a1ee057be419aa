#!/usr/bin/env bash
# Fetch Triton's perf_analyzer into .venv/perf_analyzer/ without touching installed packages.
#
# The PyPI `perf-analyzer` package is an empty placeholder and tritonclient 2.73 ships no binary;
# older manylinux tritonclient wheels carry bin/perf_analyzer. It links libb64.so.0d (Debian:
# libb64-0d) and libcudart.so.12 (taken from the nvidia-cuda-runtime-cu12 wheel, even on CPU).
# Prints the path of a wrapper that sets LD_LIBRARY_PATH; exits non-zero with the reason if blocked.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${ROOT}/.venv/bin/python"
DEST="${ROOT}/.venv/perf_analyzer"
VERSION="${TRITONCLIENT_VERSION:-2.50.0}"
WRAPPER="${DEST}/perf_analyzer"

if [[ -x "${WRAPPER}" ]]; then
  echo "${WRAPPER}"
  exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "${TMP}"' EXIT
mkdir -p "${DEST}/bin" "${DEST}/lib"

"${PY}" -m pip download --quiet --no-deps --only-binary=:all: \
  --platform manylinux2014_x86_64 --python-version 3.11 \
  "tritonclient==${VERSION}" nvidia-cuda-runtime-cu12 -d "${TMP}" >&2

"${PY}" - "${TMP}" "${DEST}" <<'PYEOF'
import sys, zipfile, pathlib, stat
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
found = {}
for wheel in tmp.glob("*.whl"):
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.endswith("/bin/perf_analyzer"):
                target = dest / "bin" / "perf_analyzer"
            elif name.endswith("/libcudart.so.12"):
                target = dest / "lib" / "libcudart.so.12"
            else:
                continue
            target.write_bytes(zf.read(name))
            target.chmod(target.stat().st_mode | stat.S_IEXEC)
            found[target.name] = True
missing = {"perf_analyzer", "libcudart.so.12"} - set(found)
if missing:
    sys.exit(f"not found in the downloaded wheels: {sorted(missing)}")
PYEOF

if ! ldconfig -p | grep -q "libb64.so.0d"; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null; then
    apt-get install -y -qq libb64-0d >&2 || (apt-get update -qq >&2 && apt-get install -y -qq libb64-0d >&2)
  else
    echo "perf_analyzer needs libb64.so.0d: install Debian/Ubuntu package libb64-0d" >&2
    exit 1
  fi
fi

cat > "${WRAPPER}" <<WRAPEOF
#!/usr/bin/env bash
export LD_LIBRARY_PATH="${DEST}/lib\${LD_LIBRARY_PATH:+:\${LD_LIBRARY_PATH}}"
exec "${DEST}/bin/perf_analyzer" "\$@"
WRAPEOF
chmod +x "${WRAPPER}"

if missing="$(LD_LIBRARY_PATH="${DEST}/lib" ldd "${DEST}/bin/perf_analyzer" | grep 'not found')"; then
  echo "perf_analyzer still misses libraries: ${missing}" >&2
  exit 1
fi
echo "${WRAPPER}"
