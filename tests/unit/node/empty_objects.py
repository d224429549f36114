"""An object module that defines no object type (it only imports one)."""

from __future__ import annotations

from goverse.examples.counter import Counter

__all__ = ["Counter"]
