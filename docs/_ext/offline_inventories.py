"""Intersphinx inventories for the external projects these docs link to, written locally.

The docs build has no network (CI, sandboxes), so intersphinx cannot download the ``objects.inv``
of Python, PyTorch or pluggy, and transformers publishes none (its docs are not built with Sphinx).
Instead of silencing nitpicky mode for external names, this module writes small inventories that
list exactly the external objects our docstrings and type hints mention, each pointing at its page
in the project's real online documentation. :func:`write_all` runs from ``conf.py`` on every build
and returns the ``intersphinx_mapping`` that uses them, so intersphinx never touches the network.

When a build fails with ``py:class reference target not found: <external name>``, add the name to
the table below (with the page that documents it); do not add project-internal names here.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path

__all__ = ["INVENTORIES", "write_all"]

#: project -> (documentation root, inventory version, {page: [(role, object name), ...]}).
#: An entry links to ``<root>/<page>#<object name>``; a page given as ``"page#anchor"`` is used as
#: is, and ``"page#"`` links the page itself (for objects that have no anchor of their own).
INVENTORIES: dict[str, tuple[str, str, dict[str, list[tuple[str, str]]]]] = {
    "python": (
        "https://docs.python.org/3",
        "3",
        {
            "library/functions.html": [
                ("py:class", "int"), ("py:class", "float"), ("py:class", "str"), ("py:class", "bool"),
                ("py:class", "object"), ("py:class", "type"), ("py:class", "bytes"),
                ("py:function", "callable"), ("py:function", "iter"), ("py:function", "repr"),
            ],
            "library/stdtypes.html": [
                ("py:class", "dict"), ("py:class", "list"), ("py:class", "tuple"), ("py:class", "set"),
                ("py:class", "frozenset"), ("py:class", "range"),
            ],
            "library/constants.html": [
                ("py:data", "None"), ("py:data", "True"), ("py:data", "False"), ("py:data", "Ellipsis"),
            ],
            "library/exceptions.html": [
                ("py:exception", "Exception"), ("py:exception", "ValueError"), ("py:exception", "TypeError"),
                ("py:exception", "RuntimeError"), ("py:exception", "NotImplementedError"),
                ("py:exception", "KeyError"), ("py:exception", "FileNotFoundError"),
                ("py:exception", "OSError"), ("py:exception", "ImportError"),
            ],
            "library/typing.html": [
                ("py:data", "typing.Any"), ("py:class", "typing.Any"),
                ("py:data", "typing.Literal"), ("py:class", "typing.Literal"),
                ("py:data", "typing.ClassVar"), ("py:class", "typing.ClassVar"),
                ("py:data", "typing.Optional"), ("py:data", "typing.Union"),
                ("py:class", "typing.Protocol"), ("py:class", "typing.NamedTuple"),
                ("py:data", "typing.TYPE_CHECKING"), ("py:function", "typing.runtime_checkable"),
            ],
            "library/collections.abc.html": [
                ("py:class", "collections.abc.Sequence"), ("py:class", "collections.abc.Mapping"),
                ("py:class", "collections.abc.Iterable"), ("py:class", "collections.abc.Iterator"),
                ("py:class", "collections.abc.Callable"), ("py:class", "collections.abc.Collection"),
                ("py:class", "collections.abc.MutableMapping"),
            ],
            "library/argparse.html": [
                ("py:class", "argparse.ArgumentParser"), ("py:class", "argparse.Namespace"),
                ("py:method", "argparse.ArgumentParser.format_help"),
            ],
            "library/dataclasses.html": [
                ("py:class", "dataclasses.Field"), ("py:function", "dataclasses.dataclass"),
                ("py:function", "dataclasses.fields"),
            ],
            # NumPy-style docstrings write "sequence of int", "iterable of str": the glossary.
            "glossary.html#term-sequence": [("py:class", "sequence")],
            "glossary.html#term-iterable": [("py:class", "iterable")],
            "glossary.html#term-mapping": [("py:class", "mapping")],
            "glossary.html#term-path-like-object": [("py:class", "path-like")],
            "library/pathlib.html": [("py:class", "pathlib.Path")],
            "library/random.html": [("py:class", "random.Random")],
            "library/os.html": [("py:class", "os.PathLike")],
            "library/types.html": [("py:class", "types.MappingProxyType")],
            "library/functools.html": [("py:function", "functools.cached_property")],
            "library/json.html": [("py:function", "json.dumps"), ("py:function", "json.loads")],
            "library/importlib.metadata.html": [("py:function", "importlib.metadata.version")],
            "library/logging.html": [("py:class", "logging.Logger")],
            "library/copy.html": [("py:function", "copy.deepcopy")],
        },
    ),
    "torch": (
        "https://docs.pytorch.org/docs/stable",
        "stable",
        {
            "tensors.html": [("py:class", "torch.Tensor"), ("py:class", "torch.LongTensor")],
            "tensor_attributes.html": [("py:class", "torch.device"), ("py:class", "torch.dtype")],
            # Type hints name the defining module; docstrings often write ``nn.Module``.
            "generated/torch.nn.Module.html#torch.nn.Module": [
                ("py:class", "torch.nn.Module"), ("py:class", "torch.nn.modules.module.Module"),
                ("py:class", "nn.Module"),
            ],
            "generated/torch.Generator.html": [("py:class", "torch.Generator")],
            "generated/torch.no_grad.html": [("py:class", "torch.no_grad")],
            "generated/torch.topk.html": [("py:function", "torch.topk")],
            "generated/torch.gather.html": [("py:function", "torch.gather")],
            "generated/torch.nn.functional.scaled_dot_product_attention.html": [
                ("py:function", "torch.nn.functional.scaled_dot_product_attention"),
            ],
        },
    ),
    # transformers' docs are built with HF doc-builder: anchors are the objects' dotted names.
    "transformers": (
        "https://huggingface.co/docs/transformers/en",
        "5",
        {
            # Modules that import transformers only under TYPE_CHECKING leave bare names such as
            # ``PreTrainedModel`` in their type hints; they are listed too.
            "main_classes/model#transformers.PreTrainedModel": [
                ("py:class", "transformers.PreTrainedModel"), ("py:class", "PreTrainedModel"),
            ],
            "main_classes/configuration#transformers.PretrainedConfig": [
                ("py:class", "transformers.PretrainedConfig"), ("py:class", "transformers.PreTrainedConfig"),
            ],
            "main_classes/tokenizer#transformers.PreTrainedTokenizerBase": [
                ("py:class", "transformers.PreTrainedTokenizerBase"), ("py:class", "PreTrainedTokenizerBase"),
            ],
            "main_classes/text_generation#transformers.GenerationMixin.generate": [
                ("py:method", "transformers.GenerationMixin.generate"),
            ],
            "internal/generation_utils#transformers.Cache": [
                ("py:class", "transformers.Cache"), ("py:class", "transformers.cache_utils.Cache"),
                ("py:class", "Cache"),
            ],
            "internal/generation_utils#transformers.DynamicCache": [
                ("py:class", "transformers.DynamicCache"), ("py:class", "transformers.cache_utils.DynamicCache"),
            ],
            "main_classes/pipelines#transformers.Pipeline": [  # the base of kvpress_lab.pipeline.KVPressLabPipeline
                ("py:class", "transformers.Pipeline"), ("py:class", "transformers.pipelines.base.Pipeline"),
            ],
            # The per-layer cache classes have no anchors of their own: link the caches page.
            "internal/generation_utils#": [
                ("py:class", "transformers.cache_utils.DynamicLayer"),
                ("py:class", "transformers.cache_utils.CacheLayerMixin"), ("py:class", "CacheLayerMixin"),
                ("py:class", "transformers.cache_utils.DynamicSlidingWindowLayer"),
            ],
        },
    ),
    # lm-evaluation-harness publishes no Sphinx docs: link the source of the class we subclass.
    "lm_eval": (
        "https://github.com/EleutherAI/lm-evaluation-harness/blob/main",
        "0.4",
        {"lm_eval/models/huggingface.py#": [("py:class", "lm_eval.models.huggingface.HFLM")]},
    ),
    "pluggy": (
        "https://pluggy.readthedocs.io/en/stable",
        "1",
        {
            "api_reference.html": [
                ("py:class", "pluggy.HookspecMarker"), ("py:class", "pluggy.HookimplMarker"),
                ("py:class", "pluggy.PluginManager"), ("py:exception", "pluggy.PluginValidationError"),
                ("py:method", "pluggy.PluginManager.check_pending"),
                ("py:method", "pluggy.PluginManager.load_setuptools_entrypoints"),
            ],
        },
    ),
}


def _lines(root: str, pages: dict[str, list[tuple[str, str]]]) -> list[str]:
    lines = []
    for page, entries in pages.items():
        for role, name in entries:
            uri = (page if "#" in page else f"{page}#{name}").removesuffix("#")  # "page#": no anchor
            lines.append(f"{name} {role} 1 {uri} -\n")
    return sorted(set(lines))


def _inventory_bytes(project: str, version: str, lines: list[str]) -> bytes:
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()
    return header + zlib.compress("".join(lines).encode(), 9)


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)  # atomic: two builds running at once never read half a file


def inventory_dir() -> Path:
    """A per-user folder outside the source tree for the inventories (``$KVPRESS_LAB_DOCS_CACHE`` if set)."""
    override = os.environ.get("KVPRESS_LAB_DOCS_CACHE")
    if override:
        return Path(override)
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"kvpress_lab-docs-{user}" / "intersphinx"


def write_all(directory: Path) -> dict[str, tuple[str, str]]:
    """Write one ``<project>.inv`` per entry of :data:`INVENTORIES` and return ``intersphinx_mapping``.

    The mapping's inventory locations are absolute local paths, so intersphinx reads the files and
    never fetches ``<root>/objects.inv``.
    """
    mapping = {}
    for project, (root, version, pages) in INVENTORIES.items():
        path = Path(directory) / f"{project}.inv"
        _write_if_changed(path, _inventory_bytes(project, version, _lines(root, pages)))
        mapping[project] = (root, str(path))
    return mapping
