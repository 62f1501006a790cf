#!/usr/bin/env bash
# Build device/samples/classroom_sample.wav: three synthetic (espeak-ng) teacher phrases with pauses and
# faint pink noise, 12 s, 16 kHz mono 16-bit. Needs espeak-ng and sox.
set -euo pipefail
out="$(dirname "$0")/../device/samples/classroom_sample.wav"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
espeak-ng -v en -s 150 -w "$tmp/s1.wav" "Good morning everyone. Please open your books at page twelve."
espeak-ng -v en-us -s 170 -p 70 -w "$tmp/s2.wav" "Wow, that is a great answer! Well done."
espeak-ng -v en -s 130 -p 30 -w "$tmp/s3.wav" "Who can tell me what happens next?"
for i in 1 2 3; do sox "$tmp/s$i.wav" -r 16000 -c 1 -b 16 "$tmp/a$i.wav"; done
sox -n -r 16000 -c 1 -b 16 "$tmp/gap.wav" trim 0 1.0
sox "$tmp/gap.wav" "$tmp/a1.wav" "$tmp/gap.wav" "$tmp/a2.wav" "$tmp/gap.wav" "$tmp/a3.wav" "$tmp/gap.wav" "$tmp/cat.wav"
sox "$tmp/cat.wav" "$tmp/pad.wav" pad 0 12 trim 0 12
sox -n -r 16000 -c 1 -b 16 "$tmp/noise.wav" synth 12 pinknoise vol 0.01
sox -m "$tmp/pad.wav" "$tmp/noise.wav" "$out"
echo "wrote $out"
