"""Compare the outputs of two `ml4f-run --json` files: equal with --exact (0.0 == -0.0), else
within DESIGN §7's float32 tolerance 1e-4 * (1 + |reference|). The first file is the reference."""

import json
import sys

ref_path, got_path, *flags = sys.argv[1:]
ref = json.load(open(ref_path))["output"]
got = json.load(open(got_path))["output"]
if len(ref) != len(got):
    sys.exit(f"{got_path}: {len(got)} values, the reference has {len(ref)}")
for i, (r, g) in enumerate(zip(ref, got)):
    bad = g != r if "--exact" in flags else not abs(g - r) <= 1e-4 * (1 + abs(r))
    if bad:
        sys.exit(f"{got_path}: value {i} is {g!r}, the reference {r!r}")
