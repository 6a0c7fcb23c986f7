# Sourced by the other scripts: installs what Refold needs (idempotent) and builds the
# example modules for wasm.
if ! command -v cargo >/dev/null 2>&1; then
  echo "Refold needs a Rust toolchain (rustup, cargo) on PATH" >&2
  exit 1
fi
examples/build.sh --target all
