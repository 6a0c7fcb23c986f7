#!/usr/bin/env bash
# Build every Rust example module into examples/dist/.
#
#   examples/build.sh [--target wasip2|unknown|all] [NAME...]
#
#   --target wasip2   (default) a component per example, examples/dist/<name>.wasm,
#                     built for wasm32-wasip2 (cargo writes a component for a cdylib).
#   --target unknown  a core module per example, examples/dist/<name>.core.wasm, built for
#                     wasm32-unknown-unknown; it carries the component-type custom section,
#                     so the host can componentize it on upload.
#   --target all      both.
#   NAME...           only these examples (folder names); all of them by default.
#
# Cargo's target directory is $CARGO_TARGET_DIR when set, else examples/target.
set -euo pipefail

examples_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dist_dir="$examples_dir/dist"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$examples_dir/target}"

usage() {
    sed -n '2,14s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

targets=(wasip2)
names=()
while (($#)); do
    case "$1" in
        --target)
            (($# >= 2)) || { usage >&2; exit 2; }
            case "$2" in
                wasip2) targets=(wasip2) ;;
                unknown) targets=(unknown) ;;
                all) targets=(wasip2 unknown) ;;
                *) echo "build.sh: unknown target '$2' (wasip2, unknown or all)" >&2; exit 2 ;;
            esac
            shift 2
            ;;
        --target=*) set -- --target "${1#--target=}" "${@:2}" ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "build.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
        *) names+=("$1"); shift ;;
    esac
done

# Every folder with a Cargo.toml is a Rust example; its package name is the folder name.
if ((${#names[@]} == 0)); then
    for manifest in "$examples_dir"/*/Cargo.toml; do
        names+=("$(basename "$(dirname "$manifest")")")
    done
fi
for name in "${names[@]}"; do
    [[ -f "$examples_dir/$name/Cargo.toml" ]] || { echo "build.sh: no example '$name' in $examples_dir" >&2; exit 2; }
done

rust_target() {
    case "$1" in
        wasip2) echo wasm32-wasip2 ;;
        unknown) echo wasm32-unknown-unknown ;;
    esac
}

# The file name an example gets in dist/ for a target.
dist_name() {
    case "$2" in
        wasip2) echo "$1.wasm" ;;
        unknown) echo "$1.core.wasm" ;;
    esac
}

# The first 8 bytes: "\0asm", then version 0x0d 0x00 and layer 0x01 0x00 for a component,
# or version 1 (layer 0) for a core module.
expected_header() {
    case "$1" in
        wasip2) echo 0061736d0d000100 ;;
        unknown) echo 0061736d01000000 ;;
    esac
}

ensure_rust_target() {
    if ! command -v rustup >/dev/null; then
        echo "build.sh: rustup not found; assuming the toolchain already has $1" >&2
        return
    fi
    if ! rustup target list --installed | grep -qx "$1"; then
        rustup target add "$1"
    fi
}

mkdir -p "$dist_dir"
package_args=()
for name in "${names[@]}"; do
    package_args+=(--package "$name")
done

built=()
for target in "${targets[@]}"; do
    triple="$(rust_target "$target")"
    ensure_rust_target "$triple"
    # The release profile (opt-level 3, fat LTO, one codegen unit) is set in examples/Cargo.toml.
    cargo build --manifest-path "$examples_dir/Cargo.toml" --release --target "$triple" "${package_args[@]}"
    for name in "${names[@]}"; do
        artifact="$CARGO_TARGET_DIR/$triple/release/${name//-/_}.wasm"
        output="$dist_dir/$(dist_name "$name" "$target")"
        cp "$artifact" "$output"
        header="$(head -c 8 "$output" | od -An -tx1 | tr -d ' \n')"
        if [[ "$header" != "$(expected_header "$target")" ]]; then
            echo "build.sh: $output does not start with the expected header (got $header)" >&2
            exit 1
        fi
        if [[ "$target" == unknown ]] && ! grep -qa 'component-type' "$output"; then
            echo "build.sh: $output has no component-type custom section" >&2
            exit 1
        fi
        built+=("$output")
    done
done

echo "Built into $dist_dir (cargo target dir: $CARGO_TARGET_DIR):"
for output in "${built[@]}"; do
    printf '  %-40s %8d bytes\n' "${output#"$examples_dir"/}" "$(wc -c <"$output")"
done
