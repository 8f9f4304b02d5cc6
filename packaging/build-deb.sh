#!/usr/bin/env bash
# Builds the Debian package of cyberwave-cloud-node:
#   1. the release binary;
#   2. its shell completions and man page, into target/packaging/, made by
#      running that binary (the package's assets in Cargo.toml point there);
#   3. the .deb, with cargo-deb (installed first if `cargo deb` is missing).
# Prints the path of the .deb as the last line. Extra arguments go to
# `cargo deb`, e.g. --deb-revision 2.
set -euo pipefail
cd "$(dirname "$0")/.."

name=cyberwave-cloud-node

echo "==> cargo build --release" >&2
# Both binaries: the node, and the shim its workloads run under.
cargo build --release --locked --bin "$name" --bin "$name-shim"

# Where cargo put it (honours CARGO_TARGET_DIR and .cargo/config.toml).
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="${target_dir:-target}/release/$name"
[ -x "$bin" ] || { echo "error: no binary at $bin" >&2; exit 1; }
[ -x "$bin-shim" ] || { echo "error: no shim at $bin-shim" >&2; exit 1; }

echo "==> completions and man page into target/packaging/" >&2
out=target/packaging
rm -rf "$out"
mkdir -p "$out/completions"
"$bin" completions bash >"$out/completions/$name.bash"
"$bin" completions zsh >"$out/completions/_$name"
"$bin" completions fish >"$out/completions/$name.fish"
"$bin" man >"$out/$name.1"
for f in "$out/completions/$name.bash" "$out/completions/_$name" \
    "$out/completions/$name.fish" "$out/$name.1"; do
    [ -s "$f" ] || { echo "error: $f is empty" >&2; exit 1; }
done

if ! cargo deb --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-deb --locked" >&2
    cargo install cargo-deb --locked
fi

echo "==> cargo deb --no-build" >&2
# cargo-deb prints the path of the package it wrote as its last line.
deb=$(cargo deb --no-build --locked "$@" | tail -n 1)
[ -f "$deb" ] || { echo "error: cargo deb wrote no package (got: $deb)" >&2; exit 1; }
echo "$deb"
