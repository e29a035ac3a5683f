"""The configs and recipes llt ships, found inside the installed package.

The repository keeps them at the top level (`configs/`, `recipes/`), where users read and
copy them; `llt/shipped/configs` and `llt/shipped/recipes` are links to those folders, and
the build copies their files into the wheel as package data. So one set of files serves
a source checkout, an editable install and a wheel installed anywhere, and a flag such as
`--lora_config_path configs/lora.json` works from any folder.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped_root() -> Path:
    """The folder holding `configs/` and `recipes/` as installed with llt."""
    return Path(str(files("llt") / "shipped"))


def shipped(rel: str) -> Path:
    """A shipped file by its repository path, e.g. `configs/deepspeed/zero2.json`.

    Examples:
        >>> shipped("configs/lora.json").is_file()
        True
        >>> shipped("recipes/quickstart_cpu.yaml").name
        'quickstart_cpu.yaml'
    """
    return shipped_root() / rel


def user_or_shipped(value: str) -> Path:
    """`value` as given when that path exists, else the shipped file of that repository
    path (so a recipe may name `configs/lora.json` and work from any folder)."""
    path = Path(value)
    if not path.exists() and not path.is_absolute() and shipped(value).exists():
        return shipped(value)
    return path
