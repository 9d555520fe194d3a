#!/usr/bin/env bash
# Idempotent setup of a dev/CI machine (Debian), run from anywhere:
#   1. system packages (fuse3, libfuse3-dev, compilers, ...) -- apt is skipped
#      entirely when all are already installed;
#   2. .venv in the repo with python3 >= 3.11;
#   3. `pip install -e '.[test]'` (generates dfs/_proto, builds dfs._native),
#      skipped when a stamp matching the build inputs exists and the
#      generated/compiled modules import.
# Set DFS_BOOTSTRAP_FORCE=1 to reinstall regardless of the stamp.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "bootstrap: $*" >&2; }

# --- 1. system packages ------------------------------------------------------
APT_PKGS=(fuse3 libfuse3-dev pkg-config iproute2 build-essential python3-venv python3-dev rsync git)
missing=()
for p in "${APT_PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      SUDO=(sudo -n)
    else
      log "missing system packages (${missing[*]}) and not root; install them and re-run"
      exit 1
    fi
  else
    SUDO=()
  fi
  log "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- 2. virtualenv -------------------------------------------------------------
pick_python() {
  local c
  for c in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
    if command -v "$c" >/dev/null 2>&1 &&
       "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

if [[ -x .venv/bin/python ]] && ! .venv/bin/python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  log "existing .venv is broken or too old; recreating"
  rm -rf .venv
fi
if [[ ! -x .venv/bin/python ]]; then
  PY=$(pick_python) || { log "need python3 >= 3.11"; exit 1; }
  log "creating .venv with $PY ($("$PY" --version 2>&1))"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi

# --- 3. install the project ------------------------------------------------------
# Everything that changes what `pip install -e .` produces.
inputs_hash() {
  {
    .venv/bin/python --version 2>&1
    for f in pyproject.toml setup.py scripts/gen_proto.py; do [[ -f $f ]] && sha256sum "$f"; done
    find proto native -type f \( -name '*.proto' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.h' -o -name '*.c' \) \
      -not -path 'native/*.c' -print0 2>/dev/null | LC_ALL=C sort -z | xargs -0 -r sha256sum
  } | sha256sum | cut -d' ' -f1
}
STAMP=.venv/.dfs-bootstrap-stamp
want=$(inputs_hash)
if [[ -z ${DFS_BOOTSTRAP_FORCE:-} && -f $STAMP && "$(cat "$STAMP")" == "$want" ]] &&
   .venv/bin/python -c 'import dfs._proto.meta_pb2, dfs._proto.meta_pb2_grpc, dfs._native.crc32c, dfs._native.datapath' 2>/dev/null; then
  log "up to date"
else
  log "installing dfs (editable) with test extras"
  rm -f "$STAMP"
  .venv/bin/python -m pip install -q -e '.[test]'
  .venv/bin/python -c 'import dfs._proto.meta_pb2, dfs._proto.meta_pb2_grpc, dfs._native.crc32c, dfs._native.datapath'
  echo "$want" > "$STAMP"
fi

# --- 4. the optional "ai" extra (torch, safetensors) for tests/unit/test_torch.py ----------
# Only a CPU build: the extra as pyproject.toml states it when pip resolves that without CUDA
# (no nvidia-* wheels in its dry-run report), else a "+cpu" build of $DFS_TORCH_CPU (a local
# wheel or index may serve one; PyPI's plain torch for Linux pulls gigabytes of CUDA), else
# nothing and the torch tests skip. DFS_BOOTSTRAP_AI=0 never installs it.
cpu_only() {
  local plan
  plan=$(.venv/bin/python -m pip install --dry-run -q --report - "$@" 2>/dev/null) &&
    ! grep -qi '"name": *"\(nvidia-\|cuda-\|triton\)' <<<"$plan"
}
if [[ ${DFS_BOOTSTRAP_AI:-1} != 0 ]] && ! .venv/bin/python -c 'import torch, safetensors' 2>/dev/null; then
  mapfile -t ai < <(.venv/bin/python -c 'import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["ai"]))')
  cpu=("torch==${DFS_TORCH_CPU:-2.13.0}+cpu" "${ai[@]:1}")
  if cpu_only "${ai[@]}"; then
    log "installing the ai extra (CPU torch, safetensors)"
    .venv/bin/python -m pip install -q "${ai[@]}" || log "the ai extra did not install; the torch tests will skip"
  elif cpu_only "${cpu[@]}"; then
    log "installing the ai extra with ${cpu[0]}"
    .venv/bin/python -m pip install -q "${cpu[@]}" || log "the ai extra did not install; the torch tests will skip"
  else
    log "no CPU-only torch available here; the torch tests will skip"
  fi
fi
log "done"
