#!/usr/bin/env bash
# Install the system packages Divisor needs to build and test (Debian/Ubuntu).
# Idempotent: when every package is already installed, apt is not touched at all.
set -euo pipefail

PKGS=(
  build-essential pkg-config clang libclang-dev
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev
  libavfilter-dev libavdevice-dev
  ffmpeg
  nasm
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
  python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
  tshark
  iproute2 nftables iputils-ping procps curl ca-certificates
  gir1.2-gst-rtsp-server-1.0 fonts-dejavu-core util-linux
  chromium nodejs
  janus
  libvirt-dev libvirt-daemon libvirt-daemon-driver-lxc libvirt-clients
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# Debian's nodejs ships npm separately (NodeSource's nodejs includes it).
command -v npm >/dev/null 2>&1 || missing+=(npm)

if ((${#missing[@]})); then
  echo "install-deps: installing: ${missing[*]}"
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install packages" >&2; exit 1; }
    SUDO=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer "no" up front.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | "${SUDO[@]}" debconf-set-selections
  "${SUDO[@]}" apt-get update -q
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all system packages present"
fi

# playwright-core for the browser tests (tests/browser), as pinned by its lock file.
browser_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/browser"
if ! cmp -s "$browser_dir/package-lock.json" "$browser_dir/node_modules/.divisor-lock"; then
  echo "install-deps: npm ci in $browser_dir"
  (cd "$browser_dir" && npm ci --no-audit --no-fund &&
    cp package-lock.json node_modules/.divisor-lock)
else
  echo "install-deps: tests/browser node modules present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    echo "install-deps: cargo is in ~/.cargo/bin but not on PATH; run: source \"\$HOME/.cargo/env\"" >&2
  else
    echo "install-deps: cargo (Rust toolchain) not found. Install it with:" >&2
    echo "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy" >&2
    echo "  source \"\$HOME/.cargo/env\"" >&2
  fi
  exit 1
fi
echo "install-deps: $(cargo --version)"

# Fuzzing (scripts/fuzz.sh): cargo-fuzz drives libFuzzer with sanitizers, which need the
# nightly toolchain.
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "install-deps: installing the nightly toolchain (for cargo fuzz)"
  if ! rustup toolchain install nightly --profile minimal; then
    echo "install-deps: cannot install the nightly toolchain; scripts/fuzz.sh needs it" >&2
    exit 1
  fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "install-deps: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
echo "install-deps: $(cargo fuzz --version)"
