"""runtime.Services, the composition root's product: every service is there, with its own class."""

from __future__ import annotations

import dataclasses
import typing

from envoi import runtime


def test_every_service_has_its_own_class_and_none_is_optional():
    hints = typing.get_type_hints(runtime.Services)
    for field in dataclasses.fields(runtime.Services):
        hint = hints[field.name]
        assert isinstance(hint, type) and hint is not object, f"Services.{field.name}: {hint!r}"
        assert field.default is dataclasses.MISSING, f"Services.{field.name} has a default (optional?)"
