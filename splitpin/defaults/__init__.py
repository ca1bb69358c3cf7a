"""Defaults shipped as package data, so an installed splitpin runs without a checkout."""

from __future__ import annotations

from pathlib import Path

GOVERNANCE_FILE = Path(__file__).resolve().parent / "governance.yaml"
"""The default governance config (in a checkout: a link to config/governance.yaml)."""
