#!/usr/bin/env bash
# Installs ml4f and runs the main job on the bundled gesture model (ML4F's own TF.js example):
# import it to the layer dialect, fold and fuse with the layer passes, and run the result on a
# seeded random input with the NumPy references.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e .
out=${1:-built}
ml4f examples/gestures.tfjsmodel.json --emit l4f -o "$out" -b gestures
ml4f-opt "$out/gestures.l4f" -p 'canonicalize,fold-batchnorm,fuse-activations' -o "$out/gestures.opt.l4f"
ml4f-opt "$out/gestures.opt.l4f" --elide-weights
ml4f-run "$out/gestures.opt.l4f"
