#!/usr/bin/env bash
# Install the Debian packages Aula's device, server and tests need (idempotent; needs root and apt).
set -euo pipefail
PACKAGES=(portaudio19-dev espeak-ng sox mosquitto mosquitto-clients postgresql chromium chromium-driver openssl e2fsprogs openssh-server rsync sudo systemd)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "Missing system packages: ${missing[*]}" >&2
    echo "Install them with: sudo apt-get install -y ${missing[*]}" >&2
    echo "(tests that need them are skipped, saying so, until then)" >&2
    # CI sets AULA_REQUIRE_SYSTEM_DEPS=1: there a missing package is an error, not a skip.
    [ "${AULA_REQUIRE_SYSTEM_DEPS:-0}" = "1" ] && exit 1
    exit 0
fi
echo "Installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || true
apt-get install -y -qq --no-install-recommends "${missing[@]}"
