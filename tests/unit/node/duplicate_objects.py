"""An object module whose type name collides with sample_objects.Tally."""

from __future__ import annotations

from goverse.objects import Object


class OtherTally(Object):
    type_name = "Tally"
