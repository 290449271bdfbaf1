"""The check an older (format 1, TorchScript) archive passes before it runs.

A format-1 archive is a TorchScript program: whatever its graphs call runs
when the separator calls ``forward``. :func:`audit_module` walks every method
of the module and of every submodule (forward hooks included), inlined, block
by block, and refuses the first operation outside an allow-list of pure tensor
operations: ``aten::`` operators less the ones that reach outside the tensors
(files, storages, memory sharing, unchecked constructors), and the ``prim::``
operators of control flow, constants, lists, tuples and attributes. Anything
of another namespace (a custom ``torch.library`` op, ``quantized::``...), a
Python call, a fork or a call left uninlined is refused too.

:func:`scan_code` runs before ``torch.jit.load``: loading runs a class's
``__setstate__``, so an archive whose code defines one is refused unread.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from sepcli.errors import ArchiveError

__all__ = ["ALLOWED_PRIM", "DENIED_ATEN", "refused_operation", "audit_module", "scan_code"]

#: ``prim::`` operators an archive may use: constants, containers, attributes,
#: control flow and the scalar/device queries TorchScript emits for Python code.
ALLOWED_PRIM: frozenset[str] = frozenset(
    {
        "Constant", "ListConstruct", "ListUnpack", "TupleConstruct", "TupleUnpack",
        "TupleIndex", "TupleSlice", "DictConstruct", "GetAttr", "SetAttr", "If", "Loop",
        "RaiseException", "Uninitialized", "unchecked_cast", "NumToTensor", "device",
        "dtype", "layout", "shape", "is_cuda", "is_cpu", "is_mps", "is_xpu", "is_meta",
        "is_sparse", "is_quantized", "is_mkldnn", "is_nested", "requires_grad", "min",
        "max", "abs", "isinstance", "unchecked_unwrap_optional", "EnumName", "EnumValue",
        "StringIndex", "AutogradZero", "BroadcastSizes", "ConstantChunk", "ListIndex",
        "data", "type", "grad", "name", "index", "Return", "Param", "CreateObject",
    }
)  # fmt: skip

#: Parts of ``aten::`` operator names that reach outside the tensors: files
#: (``from_file``, ``save``, ``load``), storages and memory sharing (``set_``
#: rebinds a tensor to any storage; ``_share``, ``storage``, ``data_ptr``,
#: ``pin_memory``, ``record_stream``), constructors that skip their bounds
#: checks (``unsafe``, ``sparse``, ``_nested``, ``_from_mask``, ``_make_``),
#: and the rest of what has no place in a separation network.
DENIED_ATEN: tuple[str, ...] = (
    "from_file", "save", "load", "storage", "set_", "_share", "share_memory", "data_ptr",
    "pin_memory", "record_stream", "unsafe", "sparse", "_nested", "nested_", "_from_mask",
    "_make_", "mmap", "file", "_cuda", "cudnn_", "miopen", "_assert_async", "sleep",
    "_local_scalar", "set_data", "_coalesce", "_indices", "_values", "to_padded",
    "_fake", "_debug", "_test", "rpc", "wait", "fork",
)  # fmt: skip

_CALLS = frozenset({"prim::CallFunction", "prim::CallMethod"})
_ALIAS = re.compile(r"\.\w+$")  # aten::add.Tensor -> aten::add (overload names)


def refused_operation(kind: str) -> bool:
    """Whether the node kind ``namespace::name`` is outside the allow-list."""
    namespace, _, name = kind.partition("::")
    name = _ALIAS.sub("", name)
    if namespace == "prim":
        return name not in ALLOWED_PRIM
    if namespace == "aten":
        return any(part in name for part in DENIED_ATEN)
    return True  # custom namespaces, prim::PythonOp's kin, onnx::, quantized::...


def _nodes(block: torch._C.Block) -> Iterator[torch._C.Node]:
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _nodes(inner)
        if "Subgraph" in node.attributeNames():  # fork, fusion groups: refused above anyway
            yield from _nodes(node.g("Subgraph").block())


def _graphs(module: torch.jit.ScriptModule) -> Iterator[tuple[str, torch._C.Graph]]:
    """(qualified name, graph) of every method and hook of ``module`` and its submodules."""
    for prefix, sub in module.named_modules():
        c = sub._c
        where = prefix or "<module>"
        for name in c._method_names():
            yield f"{where}.{name}", c._get_method(name).graph
        for getter in ("_get_forward_hooks", "_get_forward_pre_hooks"):
            for hook in getattr(c, getter, lambda: [])():
                yield f"{where}.{getter[5:-1]}.{hook.name}", hook.graph


def audit_module(module: torch.jit.ScriptModule, where: str) -> None:
    """Refuse ``module`` unless every operation of every method is allowed.

    Each method is checked as written (so a refusal names the method that holds
    the operation). A method that calls anything but another module's method
    (a scripted function, a TorchScript class's method, an interface) is then
    checked inlined (``torch._C._jit_pass_inline`` on a copy), so the callee is
    checked where it runs; a call that stays a call once inlined is refused.

    Raises:
        ArchiveError: one line naming the operation and the method.
    """
    modules = set()
    for sub in module.modules():
        modules.add(sub._c._type().qualified_name())
    graphs = list(_graphs(module))
    to_inline = []
    for method, graph in graphs:
        calls_out = False
        for node in _nodes(graph.block()):
            kind = node.kind()
            if kind in _CALLS:
                target = node.inputsAt(0).type()
                qualified = getattr(target, "qualified_name", None)
                calls_out |= kind == "prim::CallFunction" or qualified is None
                calls_out |= qualified is not None and qualified() not in modules
                continue  # module methods are checked themselves, other callees inlined
            _check(kind, method, where)
        if calls_out:
            to_inline.append((method, graph))
    for method, graph in to_inline:
        inlined = graph.copy()
        torch._C._jit_pass_inline(inlined)
        for node in _nodes(inlined.block()):
            _check(node.kind(), method, where)


def _check(kind: str, method: str, where: str) -> None:
    if refused_operation(kind):
        raise ArchiveError(
            f"{where}: refused: operation {kind} in {method} is not a pure tensor "
            "operation (format-1 archives run only those; see docs/models.md)"
        )


def scan_code(path: Path, data: bytes | None = None) -> None:
    """Before ``torch.jit.load``: refuse code that runs while the archive loads.

    Args:
        path: the archive (read unless ``data``, its bytes, is given).

    Raises:
        ArchiveError: a code file defines ``__setstate__`` (or is unreadable).
    """
    try:
        with zipfile.ZipFile(path if data is None else io.BytesIO(data)) as zf:
            for info in zf.infolist():
                if "/code/" not in info.filename or not info.filename.endswith(".py"):
                    continue
                if b"__setstate__" in zf.read(info):
                    raise ArchiveError(
                        f"{path}: refused: {info.filename.split('/code/', 1)[1]} defines "
                        "__setstate__, code that would run while the archive loads"
                    )
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError) as exc:
        raise ArchiveError(f"{path}: damaged archive ({exc})") from None
