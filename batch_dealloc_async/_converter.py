"""The one cattrs converter between the models and the service's JSON.

Every attrs field maps to its camelCase wire name; the odd keys (``odata.nextLink``) sit in ``_WIRE``.
Reading tolerates unknown keys (the service adds fields such as ``odata.metadata``); writing omits
fields left at their default, so an empty option never becomes ``null`` on the wire.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from ._models import BatchNodeListResult

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["CONVERTER", "dump_json", "load_model", "make_converter", "wire_name"]

T = TypeVar("T")

_WIRE: Final[Mapping[tuple[type, str], str]] = {
    (BatchNodeListResult, "odata_next_link"): "odata.nextLink",
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def wire_name(cls: type, field: str) -> str:
    """The JSON key the service uses for ``cls.field``."""
    return _WIRE.get((cls, field), _camel(field))


def _parse_datetime(value: object, _: type) -> datetime:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise TypeError(f"expected an RFC 3339 string, got {type(value).__name__}")
    return datetime.fromisoformat(value)


def make_converter() -> cattrs.Converter:
    """Build the converter; the module constant :data:`CONVERTER` is the one to use."""
    conv = cattrs.Converter()
    conv.register_structure_hook(datetime, _parse_datetime)
    conv.register_unstructure_hook(datetime, lambda d: d.isoformat().replace("+00:00", "Z"))

    def overrides(cls: type) -> dict[str, Any]:
        return {a.name: override(rename=wire_name(cls, a.name)) for a in attrs.fields(cls)}

    def unstructure_factory(cls: type) -> Callable[[Any], dict[str, Any]]:
        return make_dict_unstructure_fn(cls, conv, _cattrs_omit_if_default=True, **overrides(cls))

    def structure_factory(cls: type) -> Callable[[Any, type], Any]:
        return make_dict_structure_fn(cls, conv, **overrides(cls))

    conv.register_unstructure_hook_factory(attrs.has, unstructure_factory)
    conv.register_structure_hook_factory(attrs.has, structure_factory)
    return conv


CONVERTER: Final = make_converter()


def dump_json(value: object) -> bytes:
    """Serialise a model exactly as the official SDK does (``json.dumps`` defaults: ``", "`` and ``": "``)."""
    return json.dumps(CONVERTER.unstructure(value)).encode()


def load_model(data: object, cls: type[T]) -> T:
    """Structure already-decoded JSON into ``cls``; raises cattrs' errors for the caller to map."""
    return CONVERTER.structure(data, cls)
