"""An object module that fails to import (the node must refuse to start)."""

from __future__ import annotations

raise RuntimeError("this module is broken on purpose")
