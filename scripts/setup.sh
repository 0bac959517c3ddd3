#!/usr/bin/env bash
# Install what a fresh Debian/Ubuntu machine lacks, then the package.
#   scripts/setup.sh          runtime only (PortAudio for device capture)
#   scripts/setup.sh --test   plus JACK + the ALSA plugins for the virtual microphone, chromium +
#                             chromium-driver for the console's browser test, and pytest/ruff/selenium
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
apt_pkgs=(libportaudio2 libsndfile1)
if [[ "${1:-}" == "--test" ]]; then
  extra="[test]"
  apt_pkgs+=(jackd2 libasound2-plugins chromium chromium-driver)  # chromium: the console's browser test
fi
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  if command -v apt-get >/dev/null 2>&1; then
    sudo_=""; [[ $(id -u) -ne 0 ]] && sudo_="sudo"
    echo "setup: installing ${missing[*]}" >&2
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: please install the PortAudio library (and JACK for tests): ${missing[*]}" >&2
  fi
fi
python3 -m pip install -q -e ".${extra}"
echo "setup: done ($(python3 -c 'import bridge; print("a2e-bridge", bridge.__version__)'))" >&2
