#!/usr/bin/env bash
# A virtual microphone for trying the bridge on a machine without a sound card.
#
#   scripts/virtual-mic.sh FILE.raw [RATE] [NAME]      (defaults: 16000, a2e_vmic)
#
# FILE.raw holds headerless S16_LE mono samples (make one with
# `ffmpeg -i speech.wav -f s16le -ac 1 -ar 16000 speech.raw`).  Starts jackd with
# the dummy driver and an ALSA capture device NAME that "hears" FILE.raw at real
# time, prints the two `export` lines for the shell that runs
# `a2e-bridge run --device NAME`, and keeps jackd running until Ctrl-C.
# To make the device go away under a running bridge and come back (issue 7 item 2):
# `kill -USR1 PID` kills jackd (as a crash would), `kill -USR2 PID` starts it again
# under the same name (PID: this script's, printed at start).
# Needs: jackd2, libasound2-plugins, libportaudio2 (Debian/Ubuntu package names).
#
# The setup (ALSA config text, jackd start/stop) lives in tests/virtual_mic.py,
# shared with the test suite; this script only runs it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -lt 1 || $# -gt 3 ]]; then
    echo "usage: $0 FILE.raw [RATE] [NAME]" >&2
    exit 2
fi
raw="$(realpath -- "$1")"
shift
cd "$repo"
exec "${PYTHON:-python3}" -m tests.virtual_mic "$raw" "$@"
