"""A read-only, hashable, picklable mapping of JSON values (a recipe's strategy hyperparameters)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["FrozenMapping"]


class FrozenMapping(Mapping[str, Any]):
    """An immutable ``str -> JSON value`` mapping that hashes, pickles and deep-copies.

    Values are JSON-normalised copies of what was given (tuples become lists), so two mappings
    with the same content are equal and hash alike; ``hash`` is that of the canonical JSON text.
    Nested lists and dicts are the mapping's own copies: read them, never mutate them.

    >>> params = FrozenMapping({"kernel_size": 7, "pooling": "max"})
    >>> params["kernel_size"], hash(params) == hash(FrozenMapping({"pooling": "max", "kernel_size": 7}))
    (7, True)
    >>> params == {"kernel_size": 7, "pooling": "max"}
    True
    """

    __slots__ = ("_data", "_key")

    def __init__(self, data: Mapping[str, Any] = ()):  # type: ignore[assignment]
        normalised = json.loads(json.dumps(dict(data)))
        object.__setattr__(self, "_data", normalised)
        object.__setattr__(self, "_key", json.dumps(normalised, sort_keys=True))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMapping):
            return self._key == other._key
        return isinstance(other, Mapping) and dict(self._data) == dict(other)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only.")

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return type(self), (self._data,)

    def __repr__(self) -> str:
        return repr(self._data)
