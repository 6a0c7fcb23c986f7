#!/usr/bin/env bash
# Build the example modules into examples/dist/.
#
#   examples/build.sh [--lang LANGS] [--target wasip2|unknown|all] [NAME...]
#
#   --lang LANGS      rust (default, or all when NAMEs are given), js, py, c or all;
#                     several as a list: --lang js,py.
#                     The first build of js, py or c installs its pinned toolchain under
#                     examples/tools/ (and clang from Debian's packages for c).
#   --target wasip2   (default) a component per Rust example, examples/dist/<name>.wasm,
#                     built for wasm32-wasip2 (cargo writes a component for a cdylib).
#   --target unknown  a core module per Rust example, examples/dist/<name>.core.wasm, built
#                     for wasm32-unknown-unknown; it carries the component-type custom
#                     section, so the host can componentize it on upload.
#   --target all      both.
#   NAME...           only these examples (folder names); all of the chosen languages' by
#                     default.
#
# JavaScript and Python examples become components (<name>.wasm), C ones core modules
# (<name>.core.wasm) that the host componentizes on upload; --target applies to Rust alone.
# Cargo's target directory is $CARGO_TARGET_DIR when set, else examples/target.
set -euo pipefail

examples_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dist_dir="$examples_dir/dist"
tools_dir="$examples_dir/tools"
wit_dir="$examples_dir/../wit"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$examples_dir/target}"

# Pinned toolchains. componentize-js (and what it brings) is pinned by
# tools/package-lock.json, componentize-py by tools/requirements.txt.
wit_bindgen_version=0.61.1 # the wit-bindgen of refold-guest
debian_c_packages=(clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32)
clang=clang-14

# The examples in other languages: folder, language, world, and the guest contract's
# version when it is not 0.1 (wit/refold.wit; 0.2 is wit/0.2/refold.wit).
other_examples=(
    "bank-account-js js reducer"
    "order-summary-js js projection"
    "shipping-policy-js js processor 0.2"
    "bank-account-py py reducer"
    "bank-account-c c reducer"
)

usage() {
    sed -n '2,22s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

langs=()
targets=(wasip2)
names=()
while (($#)); do
    case "$1" in
        --lang)
            (($# >= 2)) || { usage >&2; exit 2; }
            IFS=, read -ra langs <<<"$2"
            for lang in "${langs[@]}"; do
                case "$lang" in
                    rust | js | py | c) ;;
                    all) langs=(rust js py c); break ;;
                    *) echo "build.sh: unknown language '$lang' (rust, js, py, c or all)" >&2; exit 2 ;;
                esac
            done
            shift 2
            ;;
        --lang=*) set -- --lang "${1#--lang=}" "${@:2}" ;;
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

# Named examples are looked for in every language; otherwise Rust is the default.
if ((${#langs[@]} == 0)); then
    if ((${#names[@]})); then langs=(rust js py c); else langs=(rust); fi
fi

wants_lang() {
    local lang
    for lang in "${langs[@]}"; do [[ "$lang" == "$1" ]] && return 0; done
    return 1
}

wants_name() {
    local name
    ((${#names[@]} == 0)) && return 0
    for name in "${names[@]}"; do [[ "$name" == "$1" ]] && return 0; done
    return 1
}

# Every folder with a Cargo.toml is a Rust example; its package name is the folder name.
rust_names=()
for manifest in "$examples_dir"/*/Cargo.toml; do
    name="$(basename "$(dirname "$manifest")")"
    if wants_lang rust && wants_name "$name"; then rust_names+=("$name"); fi
done
other_builds=()
for entry in "${other_examples[@]}"; do
    read -r name lang world _ <<<"$entry"
    if wants_lang "$lang" && wants_name "$name"; then other_builds+=("$entry"); fi
done
for name in "${names[@]}"; do
    if [[ ! -f "$examples_dir/$name/Cargo.toml" ]] && ! printf '%s\n' "${other_examples[@]}" | grep -q "^$name "; then
        echo "build.sh: no example '$name' in $examples_dir" >&2
        exit 2
    fi
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

built=()

# Checks an output's header (wasip2: a component; unknown: a core module that carries the
# component type) and records it for the summary.
check_output() {
    local output="$1" kind="$2" header
    header="$(head -c 8 "$output" | od -An -tx1 | tr -d ' \n')"
    if [[ "$header" != "$(expected_header "$kind")" ]]; then
        echo "build.sh: $output does not start with the expected header (got $header)" >&2
        exit 1
    fi
    if [[ "$kind" == unknown ]] && ! grep -qa 'component-type' "$output"; then
        echo "build.sh: $output has no component-type custom section" >&2
        exit 1
    fi
    built+=("$output")
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

build_rust() {
    local package_args=() target triple name
    for name in "${rust_names[@]}"; do package_args+=(--package "$name"); done
    for target in "${targets[@]}"; do
        triple="$(rust_target "$target")"
        ensure_rust_target "$triple"
        # The release profile (opt-level 3, fat LTO, one codegen unit) is set in examples/Cargo.toml.
        cargo build --manifest-path "$examples_dir/Cargo.toml" --release --target "$triple" "${package_args[@]}"
        for name in "${rust_names[@]}"; do
            cp "$CARGO_TARGET_DIR/$triple/release/${name//-/_}.wasm" "$dist_dir/$(dist_name "$name" "$target")"
            check_output "$dist_dir/$(dist_name "$name" "$target")" "$target"
        done
    done
    # The same sources against guest contract 0.1 (refold-guest's contract-0-1 feature),
    # as <name>.v0.1.wasm, to compare the two contract versions. Their own target folder:
    # the feature changes the SDK.
    local v01_names=()
    for name in "${rust_names[@]}"; do
        if [[ "$name" == bank-account || "$name" == order-summary ]]; then v01_names+=("$name"); fi
    done
    ((${#v01_names[@]})) || return 0
    package_args=()
    for name in "${v01_names[@]}"; do package_args+=(--package "$name"); done
    ensure_rust_target wasm32-wasip2
    CARGO_TARGET_DIR="$CARGO_TARGET_DIR/contract-0-1" cargo build --manifest-path "$examples_dir/Cargo.toml" \
        --release --target wasm32-wasip2 --features refold-guest/contract-0-1 "${package_args[@]}"
    for name in "${v01_names[@]}"; do
        cp "$CARGO_TARGET_DIR/contract-0-1/wasm32-wasip2/release/${name//-/_}.wasm" "$dist_dir/$name.v0.1.wasm"
        check_output "$dist_dir/$name.v0.1.wasm" wasip2
    done
}

# --- toolchains, each installed once (a later run finds it and goes on) ---

ensure_js_tools() {
    local stamp="$tools_dir/node_modules/.installed-from-lock"
    command -v npm >/dev/null || { echo "build.sh: js examples need Node.js 20+ and npm" >&2; exit 1; }
    if [[ ! -f "$stamp" ]] || ! cmp -s "$stamp" "$tools_dir/package-lock.json"; then
        # Not `npm ci`: it refuses a lock without the optional native packages of other
        # platforms, which a registry mirror may not serve. `install` follows the lock too.
        npm install --prefix "$tools_dir" --no-save --no-audit --no-fund
        cp "$tools_dir/package-lock.json" "$stamp"
    fi
}

ensure_py_tools() {
    local venv="$tools_dir/venv" pinned
    pinned="$(sed -n 's/^componentize-py==//p' "$tools_dir/requirements.txt")"
    if [[ "$("$venv/bin/componentize-py" --version 2>/dev/null)" != "componentize-py $pinned" ]]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$tools_dir/requirements.txt"
    fi
}

ensure_c_tools() {
    local missing=() package
    for package in "${debian_c_packages[@]}"; do
        dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
    done
    if ((${#missing[@]})); then
        local sudo=()
        ((EUID == 0)) || sudo=(sudo)
        # Refresh the package lists only when they do not know a package yet.
        if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then "${sudo[@]}" apt-get update; fi
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
    fi
    if [[ "$("$tools_dir/cargo/bin/wit-bindgen" --version 2>/dev/null)" != "wit-bindgen-cli $wit_bindgen_version" ]]; then
        # A debug build without debug info compiles in a third of the time of a release
        # build, and generating bindings takes no time either way.
        env -u CARGO_TARGET_DIR CARGO_PROFILE_DEV_DEBUG=0 cargo install wit-bindgen-cli \
            --version "$wit_bindgen_version" --locked --debug --no-default-features --features c \
            --root "$tools_dir/cargo"
    fi
}

# --- one example in another language ---

build_js() {
    local name="$1" world="$2" wit_dir="$3" output="$dist_dir/$1.wasm"
    # Run from examples/ so that the module's imports of ../js-lib resolve: componentize-js
    # gives the JavaScript engine the working directory as its root.
    (cd "$examples_dir" && "$tools_dir/node_modules/.bin/componentize-js" "$name/index.js" \
        --wit "$wit_dir" --world-name "$world" --disable http fetch-event --out "$output")
    check_output "$output" wasip2
}

build_py() {
    local name="$1" world="$2" wit_dir="$3" output="$dist_dir/$1.wasm"
    # --stub-wasi: the Python runtime imports wasi:sockets, which the sandbox refuses;
    # stubbing WASI leaves a component that imports only its world (and traps on print).
    (cd "$examples_dir" && env -u VIRTUAL_ENV "$tools_dir/venv/bin/componentize-py" --quiet \
        -d "$wit_dir" -w "$world" componentize --stub-wasi -p "$name" app -o "$output")
    check_output "$output" wasip2
}

build_c() {
    local name="$1" world="$2" wit_dir="$3" output="$dist_dir/$1.core.wasm"
    local bindings="$CARGO_TARGET_DIR/wit-bindgen-c/$name"
    rm -rf "$bindings"
    local log
    if ! log="$("$tools_dir/cargo/bin/wit-bindgen" c "$wit_dir" --world "$world" --out-dir "$bindings" 2>&1)"; then
        echo "$log" >&2
        exit 1
    fi
    # A reactor (no main) that links wasi-libc for malloc and strings only: it imports
    # nothing, and its component type comes from wit-bindgen's object file.
    "$clang" --target=wasm32-wasi -mexec-model=reactor -O2 -std=c11 -Wall -Wextra \
        -I "$bindings" -Wl,--strip-debug -o "$output" \
        "$examples_dir/$name"/*.c "$bindings/$world.c" "$bindings/${world}_component_type.o"
    check_output "$output" unknown
}

# The inputs of an example in another language: its folder, the WIT, this script (pins and
# flags), its toolchain's pins (and the shared JavaScript helpers).
inputs() {
    local name="$1" lang="$2"
    echo "$examples_dir/$name" "$wit_dir" "$examples_dir/build.sh"
    case "$lang" in
        js) echo "$examples_dir/js-lib" "$tools_dir/package-lock.json" ;;
        py) echo "$tools_dir/requirements.txt" ;;
    esac
}

# Whether `output` exists and is newer than every file under the paths that follow.
up_to_date() {
    local output="$1"
    shift
    [[ -f "$output" && -z "$(find "$@" -newer "$output" -print -quit)" ]]
}

mkdir -p "$dist_dir"
if ((${#rust_names[@]})); then build_rust; fi
for lang in js py c; do
    tools_ready=0
    for entry in "${other_builds[@]}"; do
        read -r name entry_lang world contract <<<"$entry"
        [[ "$entry_lang" == "$lang" ]] || continue
        entry_wit="$wit_dir"
        [[ -n "$contract" ]] && entry_wit="$wit_dir/$contract"
        output="$dist_dir/$name.wasm"
        [[ "$lang" == c ]] && output="$dist_dir/$name.core.wasm"
        # shellcheck disable=SC2046 # the inputs are paths without spaces
        if up_to_date "$output" $(inputs "$name" "$lang"); then
            built+=("$output")
            continue
        fi
        if ((!tools_ready)); then "ensure_${lang}_tools"; tools_ready=1; fi
        "build_$lang" "$name" "$world" "$entry_wit"
    done
done

echo "Built into $dist_dir (cargo target dir: $CARGO_TARGET_DIR):"
for output in "${built[@]}"; do
    printf '  %-40s %8d bytes\n' "${output#"$examples_dir"/}" "$(wc -c <"$output")"
done
