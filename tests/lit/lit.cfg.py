# lit configuration: every .l4f/.s/.test file under tests/lit is a test.
import os

import lit.formats

config.name = "ml4f"
config.test_format = lit.formats.ShTest()
config.suffixes = [".l4f", ".s", ".test"]
config.test_source_root = os.path.dirname(__file__)
config.excludes = ["Inputs", "Output", "lit.cfg.py"]
for var in ("PATH", "HOME", "PYTHONPATH", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    if var in os.environ:
        config.environment[var] = os.environ[var]
config.substitutions.append(("%inputs", os.path.join(config.test_source_root, "Inputs")))
