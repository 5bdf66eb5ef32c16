#!/usr/bin/env bash
# Installs ml4f and compiles the bundled gesture model (ML4F's own TF.js example) end to end:
# import, layer and loop passes, Thumb-2 code, the built-in assembler, then a run of the binary in
# the Cortex-M4 emulator that validates it against the layer references. Then runs the binary once
# more with ml4f-run and compiles it again with float16 weights.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e .
out=${1:-built}
ml4f examples/gestures.tfjsmodel.json -o "$out" -b gestures --stats
ls -l "$out"/gestures.*
ml4f-run "$out/gestures.bin"
ml4f examples/gestures.tfjsmodel.json -o "$out" -b gestures16 --float16
