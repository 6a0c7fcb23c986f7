# Sourced by the other scripts: makes sure the toolchain pieces Refold needs are installed.
if ! command -v cargo >/dev/null 2>&1; then
  echo "Refold needs a Rust toolchain (rustup, cargo) on PATH" >&2
  exit 1
fi
