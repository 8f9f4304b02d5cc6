#!/usr/bin/env bash
# The README's test command: installs what the tests need when it is missing,
# then runs the whole suite. On a fresh Debian (or Ubuntu) machine with only
# Rust installed it needs nothing else; it asks for root (sudo) only when
# something has to be installed.
#
#   bash scripts/test.sh                      # cargo test --features gguf,torch
#   bash scripts/test.sh --test workloads     # extra arguments go to cargo test
#   bash scripts/test.sh --install-only       # install what is missing, run nothing
#   CYBERWAVE_TEST_FEATURES= bash scripts/test.sh --test harness_smoke
#       # the default build only (ONNX): no llama.cpp or LibTorch to build,
#       # so neither cmake/clang nor libtorch-dev is installed
#
# What it installs (apt): mosquitto and mosquitto_passwd (every test's
# broker; the password tests), openssl (the TLS tests' throw-away CA),
# python3 (the demo's and the tests' workloads), tmux (the terminal client's
# tests drive it in a tmux pane), zsh and fish (the completion scripts are
# loaded in each); for the `gguf` feature cmake, clang and
# libclang-dev (llama.cpp is built from the crate's vendored sources); for
# `torch` libtorch-dev (Debian's LibTorch, see .cargo/config.toml). With
# pip: onnxruntime (the version the pinned `ort` crate is made for), onnx
# and numpy (the model tests' fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."

features=${CYBERWAVE_TEST_FEATURES-gguf,torch}
install_only=
if [ "${1:-}" = --install-only ]; then
    install_only=1
    shift
fi
has_feature() { [[ ",$features," == *",$1,"* ]]; }

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: '$*' needs root, and sudo is not installed; run this script as root or install the packages named above yourself" >&2
        exit 1
    fi
}

# A fresh machine has empty package lists: update them once, before the
# first install.
apt_updated=
apt_install() {
    echo "==> apt-get install $*"
    if [ -z "$apt_updated" ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

missing=()
have mosquitto || missing+=(mosquitto)
have mosquitto_passwd || missing+=(mosquitto)
have openssl || missing+=(openssl)
have python3 || missing+=(python3)
have tmux || missing+=(tmux)
have zsh || missing+=(zsh)
have fish || missing+=(fish)
if has_feature gguf; then
    have cmake || missing+=(cmake)
    have clang || missing+=(clang)
    ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || missing+=(libclang-dev)
fi
if has_feature torch; then
    [ -e /usr/include/torch/script.h ] || missing+=(libtorch-dev)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    # mosquitto may be named twice (the broker and mosquitto_passwd).
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    apt_install "${missing[@]}"
fi

# The ONNX runner loads ONNX Runtime at run time; the tests (like a user's
# node) find it in Python's onnxruntime package. The version is the one the
# pinned `ort` crate is made for (src/runners/onnx.rs, RECOMMENDED_VERSION).
# `onnx` and `numpy` regenerate the fixture models and build the benchmark's.
ORT_VERSION=1.31.1
python_ready() {
    python3 -c "import sys, onnx, numpy, onnxruntime; sys.exit(onnxruntime.__version__ != '$ORT_VERSION')" 2>/dev/null
}
if ! python_ready; then
    echo "==> pip install onnxruntime==$ORT_VERSION onnx numpy"
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    pip_install() { python3 -m pip install -q --disable-pip-version-check "$@" "onnxruntime==$ORT_VERSION" onnx numpy; }
    # Debian's own Python refuses pip installs (PEP 668) unless told.
    pip_install || pip_install --break-system-packages
fi

if [ -n "$install_only" ]; then
    echo "==> everything the tests need is installed"
    exit 0
fi
if [ -n "$features" ]; then
    echo "==> cargo test --features $features $*"
    exec cargo test --features "$features" "$@"
fi
echo "==> cargo test $*"
exec cargo test "$@"
