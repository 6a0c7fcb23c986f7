# Sourced by the other scripts: installs what Refold needs (idempotent) and builds the
# example modules for wasm.
if ! command -v cargo >/dev/null 2>&1; then
  echo "Refold needs a Rust toolchain (rustup, cargo) on PATH" >&2
  exit 1
fi
examples/build.sh --target all

# Debian's Chromium (and a font to render with), for the web console's browser tests
# (tests/e2e/console.rs drives it with Playwright, which the test installs from PyPI).
if ! command -v chromium >/dev/null 2>&1; then
  sudo=()
  ((EUID == 0)) || sudo=(sudo)
  apt-cache show chromium >/dev/null 2>&1 || "${sudo[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends \
    chromium fonts-dejavu-core
fi
