#!/usr/bin/env bash
# Build the test-only guest modules of the end-to-end tests (hostile, probing, determinism
# and memory-bound checks, and a second version of bank-account) into
# tests/guests/dist/<name>.wasm, as components (wasm32-wasip2, release).
#
#   tests/guests/build.sh
#
# Cargo's target directory is $CARGO_TARGET_DIR when set, else tests/guests/target.
set -euo pipefail

guests_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dist_dir="$guests_dir/dist"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$guests_dir/target}"
triple=wasm32-wasip2
names=(bad-filter bad-init bank-account-fee entropy flood hostile loop-filter sandbox-probe shipment-ledger socket-user)
# "\0asm", then version 0x0d 0x00 and layer 0x01 0x00: a component, not a core module.
component_header=0061736d0d000100

if command -v rustup >/dev/null; then
    rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
else
    echo "build.sh: rustup not found; assuming the toolchain already has $triple" >&2
fi

mkdir -p "$dist_dir"
cargo build --manifest-path "$guests_dir/Cargo.toml" --release --target "$triple"

for name in "${names[@]}"; do
    output="$dist_dir/$name.wasm"
    cp "$CARGO_TARGET_DIR/$triple/release/${name//-/_}.wasm" "$output"
    header="$(head -c 8 "$output" | od -An -tx1 | tr -d ' \n')"
    if [[ "$header" != "$component_header" ]]; then
        echo "build.sh: $output is not a component (header $header)" >&2
        exit 1
    fi
done

echo "Built into $dist_dir (cargo target dir: $CARGO_TARGET_DIR):"
for name in "${names[@]}"; do
    printf '  %-20s %8d bytes\n' "$name.wasm" "$(wc -c <"$dist_dir/$name.wasm")"
done
