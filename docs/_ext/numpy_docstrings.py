"""Two adjustments to napoleon for this project's NumPy-style docstrings.

1. napoleon reads the first line of a property or attribute docstring as Google style's inline
   ``type: description``, so a property documented as "The layer's device: every tensor ..." renders
   "The layer's device" as a type. Our docstrings never use that form: properties and
   attributes are parsed like methods.
2. NumPy types may hold a set of values, ``pooling : {"max", "avg"}``, or a suffix,
   ``dtype : torch.dtype, default torch.float32`` / ``x : int, optional``. Sphinx would try to
   cross-reference ``{"max"`` or ``default torch.float32`` as classes, so such ``:type:`` fields
   are rewritten with explicit roles, the values as literals. Every other type
   (``torch.Tensor or None``, ``Mapping[str, Any]``) is left to Sphinx's own type-field
   cross-referencing, which understands brackets, ``or`` and ``of``.

Load it after ``sphinx.ext.napoleon``: it takes napoleon's place on ``autodoc-process-docstring``.
"""

from __future__ import annotations

import re
from typing import Any

from sphinx.ext import napoleon

_TYPE_FIELD = re.compile(r"^(\s*:type [^:]+:\s*)(.*)$")
_SUFFIX = re.compile(r",\s*(default[:=]?\s+.+|optional)$")
_VALUE_SET = re.compile(r"(\{[^{}]*\})")
#: Sphinx's own delimiters for type fields (sphinx.domains.python._object.PyXrefMixin).
_DELIMS = re.compile(r"(\s*[\[\]\(\),](?:\s*o[rf]\s)?\s*|\s+o[rf]\s+|\s*\|\s*|\.\.\.)")


def _xref_type(spec: str) -> str:
    """``torch.Tensor or None`` -> explicit roles, value sets as literals (pieces joined by ``\\ ``)."""
    pieces = []
    for chunk in _VALUE_SET.split(spec):
        if _VALUE_SET.fullmatch(chunk):
            pieces.append(f"``{chunk}``")
            continue
        for part in _DELIMS.split(chunk):
            if not part:
                continue
            if _DELIMS.fullmatch(part):
                pieces.append(part.replace("\\", "\\\\"))
            elif part == "None":
                pieces.append(":py:obj:`None`")
            elif part[0] in "\"'`":
                pieces.append(part if part.startswith("``") else f"``{part}``")
            else:
                pieces.append(f":py:class:`{part}`")
    return "\\ ".join(pieces)


def _type_fields(lines: list[str]) -> None:
    """Rewrite ``:type:`` fields with value sets or a ``default``/``optional`` suffix."""
    for i, line in enumerate(lines):
        match = _TYPE_FIELD.match(line)
        if not match:
            continue
        spec = match.group(2).strip()
        if spec == "optional":  # "model, tokenizer : optional"
            lines[i] = match.group(1) + "*optional*"
            continue
        suffix = _SUFFIX.search(spec)
        if not suffix and "{" not in spec:
            continue  # Sphinx cross-references plain types itself
        base = spec[: suffix.start()] if suffix else spec
        rendered = _xref_type(base.strip())
        if suffix:
            note = suffix.group(1)
            if note != "optional":
                value = re.sub(r"^default[:=]?\s+", "", note).strip()
                value = value if value.startswith("``") else f"``{value}``"
                note = f"default {value}"
            rendered += f", {note}"
        lines[i] = match.group(1) + rendered


def _process_docstring(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    if what in ("property", "attribute", "data"):
        what = "method"  # no inline "type: description" on the first line
    napoleon._process_docstring(app, what, name, obj, options, lines)
    _type_fields(lines)


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point: replace napoleon's docstring listener by :func:`_process_docstring`."""
    app.setup_extension("sphinx.ext.napoleon")
    listeners = app.events.listeners.get("autodoc-process-docstring", [])
    for listener in list(listeners):
        if listener.handler is napoleon._process_docstring:
            app.disconnect(listener.id)
    app.connect("autodoc-process-docstring", _process_docstring)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
