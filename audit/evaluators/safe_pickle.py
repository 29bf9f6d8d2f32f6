"""Reading torch weight files, including pickled torchxrayvision DenseNets, without running their code.

torchxrayvision publishes its DenseNets as whole pickled ``nn.Module`` objects (saved by torch < 1.6,
in the legacy non-zip format), and ``torch.load(weights_only=False)`` would import and run whatever a
pickle names, ``os.system`` included. Here every global a pickle names is resolved only through an
allowlist: torch's own ``weights_only`` table (tensors, storages, ``OrderedDict``, ...) plus
:data:`PICKLE_ALLOWLIST`, whose module classes are resolved to inert stand-ins. A stand-in is never the
real class: it only keeps the attribute dict the pickle gives it, and :func:`load_state_dict` turns
the tree of stand-ins into the ``state_dict()`` the real module would have returned. Anything else
the pickle names stops the load with :class:`UnsafePickleError` before it is called.

Zip files go through ``torch.load(weights_only=True)`` inside ``torch.serialization.safe_globals``.
That unpickler refuses legacy files that hold modules, because the legacy format stores every module
class as a persistent id and it accepts persistent ids only for storages; legacy files therefore go
through :class:`_LegacyUnpickler`: the same opcodes and rules (stricter for BUILD), plus module
persistent ids, accepted only for a class that has already resolved to a stand-in.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
from collections import Counter, OrderedDict
from collections.abc import Callable
from functools import cache
from typing import Any, ClassVar, NoReturn

import torch
from torch import Tensor
from torch._utils import IMPORT_MAPPING, NAME_MAPPING

__all__ = ["PICKLE_ALLOWLIST", "UnsafePickleError", "load_state_dict", "load_weights_only"]

_THNN_BACKEND = "torch.nn.backends.thnn._get_thnn_function_backend"

# The globals a pickled torchxrayvision DenseNet names beyond torch's own tensor allowlist. Naming a
# class here lets a file *mention* it; the class itself is never imported or run (see _stand_in).
PICKLE_ALLOWLIST: tuple[str, ...] = (
    # The classifier and its blocks (torchxrayvision/models.py): the pickled module tree is made of them.
    "torchxrayvision.models.DenseNet",
    "torchxrayvision.models._DenseBlock",
    "torchxrayvision.models._DenseLayer",
    "torchxrayvision.models._Transition",
    # DenseNet.features is a plain Sequential; _DenseBlock, _DenseLayer and _Transition subclass it.
    "torch.nn.modules.container.Sequential",
    # The layers DenseNet.__init__, _DenseLayer and _Transition build (conv0/norm0/relu0/pool0,
    # norm1/relu1/conv1/norm2/relu2/conv2, norm/relu/conv/pool, norm5, classifier).
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.pooling.AvgPool2d",
    "torch.nn.modules.linear.Linear",
    # torch <= 1.2 pickled every module's `_backend` as a call to this factory (Module._backend went in
    # pytorch#25342); torch keeps a no-op under this name for such pickles, and so do we (_no_backend).
    _THNN_BACKEND,
)


class UnsafePickleError(ValueError):
    """A weights file's pickle names a global that is not allowed; nothing from it was executed.

    ``refused`` is the global's dotted name when ``is_global``, else what the unpickler refused.
    """

    def __init__(self, path: str | os.PathLike[str], refused: str, *, is_global: bool):
        self.path = str(path)
        self.refused = refused
        self.is_global = is_global
        what = (
            f"refers to the global `{refused}`, which is not allowed"
            if is_global
            else f"does something that is not allowed ({refused})"
        )
        super().__init__(
            f"refused to load weights file {self.path}: its pickle {what}. Only torch's tensor types and "
            "the torchxrayvision DenseNet classes in audit.evaluators.safe_pickle.PICKLE_ALLOWLIST may "
            "appear in a weights file. Nothing from the file was executed. Fix: obtain the file from its "
            "official URL (`xray-audit weights fetch NAME`), or re-save it from a copy you trust as a "
            "plain state dict (torch.save(model.state_dict(), path))."
        )


# --------------------------------------------------------------------------------------------- stand-ins


class _PickledModule:
    """Stands in for an allowlisted ``nn.Module`` class: keeps the pickled attribute dict, runs nothing."""

    pickled_as: ClassVar[str] = ""
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _no_backend() -> None:
    return None


def _stand_in(name: str) -> Callable[..., Any]:
    if name == _THNN_BACKEND:
        return _no_backend
    short = name.rsplit(".", 1)[1]
    return type(f"_Pickled{short}", (_PickledModule,), {"pickled_as": name, "__module__": __name__})


_STAND_INS: dict[str, Callable[..., Any]] = {name: _stand_in(name) for name in PICKLE_ALLOWLIST}


@cache
def _legacy_allowed() -> dict[str, Any]:
    # torch's own weights_only table, so both formats allow exactly the same tensor machinery.
    from torch._weights_only_unpickler import _get_allowed_globals

    return {**_get_allowed_globals(), **_STAND_INS}


def _is_allowed(obj: Any) -> bool:
    return any(obj is v for v in _legacy_allowed().values())


# --------------------------------------------------------------------------------------------- legacy


def _refuse(message: str) -> NoReturn:
    raise pickle.UnpicklingError(message)


def _load_reduce(self: _LegacyUnpickler) -> None:
    args = self.stack.pop()
    func = self.stack[-1]
    if not _is_allowed(func):
        _refuse(f"refusing to call {func!r}, which is not an allowed global")
    self.stack[-1] = func(*args)


def _load_newobj(self: _LegacyUnpickler) -> None:
    args = self.stack.pop()
    cls = self.stack.pop()
    if cls is torch.nn.Parameter:
        self.append(torch.nn.Parameter(*args))
        return
    if not (isinstance(cls, type) and _is_allowed(cls)):
        _refuse(f"refusing to create an instance of {cls!r}, which is not an allowed class")
    self.append(cls.__new__(cls, *args))


def _load_build(self: _LegacyUnpickler) -> None:
    state = self.stack.pop()
    inst = self.stack[-1]
    kind = type(inst)
    if kind is Tensor:
        inst.set_(*state)
    elif kind is torch.nn.Parameter or isinstance(inst, _PickledModule):
        inst.__setstate__(state)
    elif kind is OrderedDict:
        inst.__dict__.update(state)
    else:
        _refuse(f"refusing to set the state of a {kind.__qualname__}")


def _list_target(self: _LegacyUnpickler) -> list[Any]:
    target = self.stack[-1]
    if type(target) is not list:
        _refuse(f"can only append to lists, got {type(target).__qualname__}")
    return target


def _dict_target(self: _LegacyUnpickler) -> dict[Any, Any]:
    target = self.stack[-1]
    if type(target) not in (dict, OrderedDict, Counter):
        _refuse(f"can only set items of dicts, got {type(target).__qualname__}")
    return target


def _load_append(self: _LegacyUnpickler) -> None:
    item = self.stack.pop()
    _list_target(self).append(item)


def _load_appends(self: _LegacyUnpickler) -> None:
    items = self.pop_mark()
    _list_target(self).extend(items)


def _load_setitem(self: _LegacyUnpickler) -> None:
    value = self.stack.pop()
    key = self.stack.pop()
    _dict_target(self)[key] = value


def _load_setitems(self: _LegacyUnpickler) -> None:
    items = self.pop_mark()
    target = _dict_target(self)
    for i in range(0, len(items), 2):
        target[items[i]] = items[i + 1]


def _load_binpersid(self: _LegacyUnpickler) -> None:
    pid = self.stack.pop()
    kind = pid[0] if type(pid) is tuple and pid else None
    kind = kind.decode("ascii", "replace") if isinstance(kind, bytes) else kind
    if kind == "storage":
        self.append(self.persistent_load(pid))
    elif (
        kind == "module" and len(pid) == 4 and isinstance(pid[1], type) and issubclass(pid[1], _PickledModule)
    ):
        # Legacy torch.save records each module class as ("module", cls, source file, source); cls has
        # already resolved to a stand-in, and torch's source comparison is skipped because it is moot.
        self.append(pid[1])
    else:
        _refuse(f"persistent id {pid!r} is neither a storage nor an allowed module class")


class _Opcodes(dict[int, Callable[[Any], None]]):
    def __missing__(self, key: int) -> Callable[[Any], None]:
        op = pickletools.code2op.get(chr(key))
        raise pickle.UnpicklingError(f"pickle opcode {op.name if op else hex(key)} is not supported")


_PLAIN_OPCODES = (
    pickle.PROTO, pickle.STOP, pickle.GLOBAL, pickle.MARK, pickle.NONE, pickle.NEWTRUE, pickle.NEWFALSE,
    pickle.BININT, pickle.BININT1, pickle.BININT2, pickle.LONG1, pickle.BINFLOAT, pickle.BINUNICODE,
    pickle.SHORT_BINSTRING, pickle.EMPTY_TUPLE, pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3,
    pickle.EMPTY_LIST, pickle.EMPTY_DICT, pickle.EMPTY_SET, pickle.BINGET, pickle.LONG_BINGET,
    pickle.BINPUT, pickle.LONG_BINPUT,
)  # fmt: skip


class _LegacyUnpickler(pickle._Unpickler):
    """The pure-Python unpickler restricted to the opcodes and rules of torch's weights_only unpickler.

    Globals resolve only through :func:`_legacy_allowed`; calls, instance creation and state updates
    are allowed only on what that table produced (or on tensors, lists and dicts), so no other code
    can be reached. torch's legacy reader subclasses this and sets ``persistent_load`` for storages.
    """

    dispatch = _Opcodes(
        {op[0]: pickle._Unpickler.dispatch[op[0]] for op in _PLAIN_OPCODES}
        | {
            pickle.REDUCE[0]: _load_reduce,
            pickle.NEWOBJ[0]: _load_newobj,
            pickle.BUILD[0]: _load_build,
            pickle.APPEND[0]: _load_append,
            pickle.APPENDS[0]: _load_appends,
            pickle.SETITEM[0]: _load_setitem,
            pickle.SETITEMS[0]: _load_setitems,
            pickle.BINPERSID[0]: _load_binpersid,
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in NAME_MAPPING:
            module, name = NAME_MAPPING[(module, name)]
        elif module in IMPORT_MAPPING:
            module = IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        allowed = _legacy_allowed()
        if full not in allowed:
            _refuse(f"Unsupported global: GLOBAL {full} is not allowed")
        return allowed[full]


class _LegacyPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: an ``Unpickler`` class and ``load``."""

    Unpickler = _LegacyUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _LegacyUnpickler(file, **kwargs).load()


# --------------------------------------------------------------------------------------------- loading


def _refusal(source: str | os.PathLike[str], exc: pickle.UnpicklingError) -> UnsafePickleError:
    message = str(exc)
    # torch words it "Unsupported global: GLOBAL x.y ..." or "unsupported GLOBAL x.y whose module ...";
    # "opcode STACK_GLOBAL is not supported" names no global.
    found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", message)
    if found:
        return UnsafePickleError(source, found.group(1), is_global=True)
    detail = message.split("WeightsUnpickler error:", 1)[-1].strip()
    return UnsafePickleError(source, (detail.splitlines() or [message])[0], is_global=False)


def _is_zip(data: bytes) -> bool:
    return data[:4] == b"PK\x03\x04"  # the test torch.load itself uses to pick its zip reader


def load_weights_only(data: bytes, source: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` of ``data`` on CPU; a refused pickle raises :class:`UnsafePickleError`."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(source, exc) from exc


def _unpickle(data: bytes, source: str | os.PathLike[str]) -> Any:
    try:
        if _is_zip(data):
            safe = [(obj, name) for name, obj in _STAND_INS.items()]
            with torch.serialization.safe_globals(safe):
                return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        # weights_only=False is what lets torch use another pickle module; that module is the
        # restricted one above, so no global outside the allowlist is resolved here either.
        return torch.load(
            io.BytesIO(data), map_location="cpu", weights_only=False, pickle_module=_LegacyPickleModule
        )
    except pickle.UnpicklingError as exc:
        raise _refusal(source, exc) from exc
    except (
        RecursionError,
        TypeError,
        RuntimeError,
        ValueError,
        KeyError,
        IndexError,
        EOFError,
        MemoryError,
    ) as exc:
        # Allowed callables fed malformed arguments, impossible sizes, truncated streams: nothing ran
        # that was not allowed, but the file is not a weights file this suite can read.
        raise UnsafePickleError(
            source, f"malformed weights file: {type(exc).__name__}: {exc}"[:300], is_global=False
        ) from None


def _plain_tensor(value: Any) -> bool:
    # Only dense CPU tensors: a sparse or nested tensor rebuilt by the legacy path skips the bounds
    # checks torch's weights_only loader applies, and a subclass could carry behaviour.
    return (
        type(value) in (Tensor, torch.nn.Parameter)
        and value.layout is torch.strided
        and not value.is_nested
        and value.device.type == "cpu"
    )


def _module_state_dict(root: _PickledModule, source: str | os.PathLike[str]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}

    def bad(what: str) -> ValueError:
        return ValueError(f"weights file {source} holds a pickled module that is not a plain module: {what}")

    seen: set[int] = set()

    def visit(module: _PickledModule, prefix: str, ancestors: tuple[int, ...]) -> None:
        if id(module) in ancestors:
            raise bad(f"module {prefix[:-1]!r} contains itself")
        # A real DenseNet is a tree about 6 levels deep; shared submodules would make the walk
        # exponential and a deep chain would exhaust the stack.
        if id(module) in seen:
            raise bad(f"module {prefix[:-1]!r} appears twice in the module tree")
        if len(ancestors) > 32:
            raise bad(f"the module tree is deeper than 32 levels at {prefix[:-1]!r}")
        seen.add(id(module))
        attrs = module.state
        if isinstance(attrs, tuple) and len(attrs) == 2:  # (dict, slots) from BUILD
            attrs = attrs[0]
        if not isinstance(attrs, dict):
            raise bad(f"{prefix or 'the top-level module'} has state {type(attrs).__name__}, not a dict")
        non_persistent = attrs.get("_non_persistent_buffers_set", set())  # absent before torch 1.6
        groups = {key: attrs.get(key, {}) for key in ("_parameters", "_buffers", "_modules")}
        if not isinstance(non_persistent, set) or not all(isinstance(g, dict) for g in groups.values()):
            raise bad(f"{prefix or 'the top-level module'} has malformed _parameters/_buffers/_modules")
        for group in ("_parameters", "_buffers"):
            for name, value in groups[group].items():
                if value is None or (group == "_buffers" and name in non_persistent):
                    continue
                if not isinstance(name, str) or not _plain_tensor(value):
                    raise bad(f"{group} entry {prefix}{name} is a {type(value).__name__}, not a dense tensor")
                out[prefix + name] = value.detach().clone()
        for name, child in groups["_modules"].items():
            if child is None:
                continue
            if not isinstance(name, str) or not isinstance(child, _PickledModule):
                raise bad(f"submodule {prefix}{name} is a {type(child).__name__}")
            visit(child, f"{prefix}{name}.", (*ancestors, id(module)))

    visit(root, "", ())
    return out


def load_state_dict(data: bytes, source: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The state dict in ``data``: a saved state dict as is, a pickled allowlisted module flattened.

    A pickled module gives exactly what ``module.state_dict()`` would (parameters, then persistent
    buffers, then submodules, ``None`` entries skipped). ``source`` names the file in errors. Raises
    :class:`UnsafePickleError` when the pickle names anything outside the allowlist, and
    ``ValueError`` when it holds something other than a state dict or a module.
    """
    obj = _unpickle(data, source)
    if isinstance(obj, _PickledModule):
        return _module_state_dict(obj, source)
    if isinstance(obj, dict) and all(isinstance(k, str) and _plain_tensor(v) for k, v in obj.items()):
        return {k: v.detach().clone() for k, v in obj.items()}
    raise ValueError(
        f"weights file {source} holds a {type(obj).__name__}, not a state dict (str -> tensor) or a "
        "pickled torchxrayvision DenseNet"
    )
