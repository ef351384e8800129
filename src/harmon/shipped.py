"""Where the tiny shapes-world model that ships inside the package lives."""

from __future__ import annotations

from pathlib import Path

SHIPPED_DIR = Path(__file__).parent / "assets" / "shapes-tiny"


def shipped_model_path() -> Path | None:
    """The folder of the shipped model, or None when this copy of harmon carries none."""
    if (SHIPPED_DIR / "config.json").is_file() and (SHIPPED_DIR / "model.safetensors").is_file():
        return SHIPPED_DIR
    return None
