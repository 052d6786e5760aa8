#!/usr/bin/env bash
# Build llama.cpp's llama-server (the peer for the CPU comparison), llama-quantize (Q4_K_M files
# for scripts/make_shaped_gguf.py) and llama-perplexity (the quality reference) from the
# llama-cpp-python SOURCE package on PyPI: its vendor/llama.cpp is a pinned llama.cpp checkout.
#
#   scripts/build_llama_server.sh            # -> third_party/llama-cpp-python-$VER/vendor/llama.cpp/build/bin/llama-server
#
# Idempotent: exits at once when all three binaries exist. Prints llama-server's path on the last
# line (the others are beside it).
# Env: LLAMA_CPP_PYTHON_VERSION (default below), JOBS (default 2), PYTHON (default .venv/bin/python),
#      NICE (default "nice -n 19"; set NICE= to build at normal priority).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VER="${LLAMA_CPP_PYTHON_VERSION:-0.3.16}"
JOBS="${JOBS:-2}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
NICE="${NICE-nice -n 19}"
TP="$ROOT/third_party"
SRC="$TP/llama-cpp-python-$VER"
LLAMA="$SRC/vendor/llama.cpp"
BIN_DIR="$LLAMA/build/bin"
TARGETS=(llama-server llama-quantize llama-perplexity)

built() {
    local target
    for target in "${TARGETS[@]}"; do [[ -x "$BIN_DIR/$target" ]] || return 1; done
}

if built; then
    echo "${TARGETS[*]} already built" >&2
    echo "$BIN_DIR/llama-server"
    exit 0
fi

mkdir -p "$TP"
if [[ ! -d "$LLAMA" ]]; then
    SDIST="$TP/llama_cpp_python-$VER.tar.gz"
    [[ -f "$SDIST" ]] || SDIST="$TP/llama-cpp-python-$VER.tar.gz"
    if [[ ! -f "$SDIST" ]]; then
        echo "downloading llama-cpp-python==$VER (source) from PyPI" >&2
        "$PYTHON" -m pip download --no-binary :all: --no-deps \
            "llama-cpp-python==$VER" -d "$TP" >&2
        # Not `ls a b | head`: ls fails for the name that is absent, and pipefail ends the script.
        for SDIST in "$TP/llama_cpp_python-$VER.tar.gz" "$TP/llama-cpp-python-$VER.tar.gz"; do
            [[ -f "$SDIST" ]] && break
        done
    fi
    [[ -f "$SDIST" ]] || { echo "source package not found in $TP" >&2; exit 1; }
    echo "unpacking $SDIST" >&2
    tar -xzf "$SDIST" -C "$TP"
    # sdists are named with an underscore; keep one predictable directory name.
    if [[ ! -d "$SRC" && -d "$TP/llama_cpp_python-$VER" ]]; then
        mv "$TP/llama_cpp_python-$VER" "$SRC"
    fi
fi
[[ -f "$LLAMA/CMakeLists.txt" ]] || { echo "no vendor/llama.cpp in $SRC" >&2; exit 1; }

# The server lives in tools/server in newer llama.cpp, examples/server in older ones.
if [[ ! -d "$LLAMA/tools/server" && ! -d "$LLAMA/examples/server" ]]; then
    echo "this llama.cpp has no server sources (tools/server or examples/server)" >&2
    exit 1
fi

cd "$LLAMA"
GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
echo "configuring llama.cpp in $LLAMA/build" >&2
$NICE cmake -B build "${GEN[@]}" -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
echo "building ${TARGETS[*]} with $JOBS jobs" >&2
$NICE cmake --build build --target "${TARGETS[@]}" -j "$JOBS" >&2
built || { echo "build finished but one of ${TARGETS[*]} is missing from $BIN_DIR" >&2; exit 1; }
echo "$BIN_DIR/llama-server"
