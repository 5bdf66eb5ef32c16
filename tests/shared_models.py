"""Where the real models of ../shared/models are: beside the repository, or $ML4F_MODELS."""

from __future__ import annotations

import os
from pathlib import Path

MODELS = Path(os.environ.get("ML4F_MODELS") or Path(__file__).resolve().parents[2] / "shared" / "models")
