"""Read a ``torch.save`` file from elsewhere without running any of its code.

A pickle is a program: its ``GLOBAL`` opcodes name any importable callable and
``REDUCE`` calls it (``os.system`` included). :func:`load_torch_file` reads the
zip archive ``torch.save`` writes with an unpickler that resolves only:

- the tensor-rebuild functions (``torch._utils._rebuild_tensor_v2``,
  ``_rebuild_parameter``, ...), replaced by zscir's own functions that view the
  archive's raw bytes as a tensor (torch's functions are never called);
- torch's storage type names (``torch.FloatStorage`` ...), as dtype markers;
- plain containers (``collections.OrderedDict``, ``set``, ``frozenset``);
- *inert stand-ins* for the class names the caller allows (``torch.nn`` modules,
  a method's own module classes, ``pathlib.PosixPath``): an object of a fresh
  empty class that only stores the state the pickle gives it.

Any other global is refused with one line naming it; nothing is imported,
constructed or executed. The result is plain data: dicts, tensors, numbers,
strings and :class:`StandIn` objects whose ``__dict__`` holds what the
original object held (for an ``nn.Module``: ``_parameters``, ``_buffers``,
``_modules``, its attributes). :func:`module_state_dict` reads a stand-in
module tree as a state dict.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable

import torch

from zscir.errors import ZscirError

STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

# class names every torch checkpoint may hold as inert objects: torch.nn building blocks
TORCH_NN_MODULES = ("torch.nn.modules.",)
COMMON_STAND_INS = ("pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePosixPath", "argparse.Namespace")


class UnsafePickleError(ZscirError):
    """A pickle names a global outside the allow-list (``global_name``), or a record zscir does not accept."""

    def __init__(self, message: str, global_name: str | None = None):
        super().__init__(message)
        self.global_name = global_name


# zip members: torch.save stores them uncompressed; a member may expand at most MAX_ZIP_RATIO times its
# compressed bytes (beyond ZIP_RATIO_FLOOR bytes), so an archive expands to at most ~MAX_ZIP_RATIO x its size
MAX_ZIP_RATIO = 20
ZIP_RATIO_FLOOR = 1 << 20


class StandIn:
    """An inert object standing for a pickled instance of ``stand_in_for`` (``module.Class``)."""

    stand_in_for = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):  # a REDUCE "call" only records its arguments
        self.__dict__["_args"] = args

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slots) form
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.stand_in_for}>"


def _stand_in_class(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (StandIn,), {"stand_in_for": qualname, "__module__": __name__})


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, torch.Tensor):
        raise UnsafePickleError("a tensor in this file is not backed by a storage record")
    size, stride = tuple(size), tuple(stride)
    if (len(size) != len(stride) or not all(isinstance(x, int) and x >= 0 for x in (*size, *stride))
            or not isinstance(storage_offset, int) or storage_offset < 0):
        raise UnsafePickleError(f"a tensor record has an invalid shape {list(size)}, stride {list(stride)} or offset "
                                f"{storage_offset!r} (sizes, strides and offsets are whole numbers >= 0): the file is "
                                f"corrupt or crafted")
    if not size:
        return storage[storage_offset].clone() if storage.numel() else storage.new_empty(())
    needed = storage_offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1 if all(size) else 0
    if needed > storage.numel():
        raise UnsafePickleError(f"a tensor of shape {list(size)} reaches past the end of its storage "
                                f"({needed} > {storage.numel()} elements): the file is truncated or corrupt")
    return torch.as_strided(storage, size, stride, storage_offset)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)


SAFE_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set, ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
}


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of torch's pre-1.6 format


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile | None, prefix: str, stand_ins: Iterable[str], source: str):
        super().__init__(file)
        self.archive, self.prefix, self.source = archive, prefix, source
        self.allowed = set(COMMON_STAND_INS) | set(stand_ins)
        self._classes: dict[str, type] = {}
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if module in _compat_pickle.IMPORT_MAPPING:   # protocol-2 pickles spell Python 2 module names
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in SAFE_FUNCTIONS:
            return SAFE_FUNCTIONS[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch" and name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool"):
            return getattr(torch, name)
        qualname = f"{module}.{name}"
        if qualname in self.allowed or (module.startswith(TORCH_NN_MODULES) and name[:1].isupper()):
            if qualname not in self._classes:
                self._classes[qualname] = _stand_in_class(qualname)
            return self._classes[qualname]
        raise UnsafePickleError(f"{self.source}: refused to load: the pickle names the global {qualname!r}, "
                                f"which is not on zscir's allow-list (tensors, containers and known class names only)",
                                qualname)

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage" or len(pid) < 5:
            raise UnsafePickleError(f"{self.source}: unsupported persistent record {str(pid)[:60]!r}")
        if self.archive is None:
            raise UnsafePickleError(f"{self.source}: tensor storage outside a torch zip archive")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise UnsafePickleError(f"{self.source}: malformed storage record {str(pid)[:80]!r}")
        if isinstance(storage_type, _StorageType):
            dtype = storage_type.dtype
        elif isinstance(storage_type, torch.dtype):
            dtype = storage_type
        else:
            raise UnsafePickleError(f"{self.source}: unsupported storage type {storage_type!r}")
        if key not in self._storages:
            name = f"{self.prefix}data/{key}"
            itemsize = torch.empty((), dtype=dtype).element_size()
            try:
                with self.archive.open(name) as f:   # only the bytes the record announces (no zip-bomb reads)
                    raw = f.read(numel * itemsize)
            except KeyError:
                raise UnsafePickleError(f"{self.source}: storage {name} is missing: the file is truncated or corrupt") from None
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise UnsafePickleError(f"{self.source}: storage {name} is unreadable ({e}): the file is truncated "
                                        f"or corrupt") from None
            if len(raw) < numel * itemsize:
                raise UnsafePickleError(f"{self.source}: storage {name} holds {len(raw)} bytes, expected "
                                        f"{numel * itemsize}: the file is truncated or corrupt")
            self._storages[key] = torch.frombuffer(bytearray(raw[: numel * itemsize]), dtype=dtype) if numel else \
                torch.empty(0, dtype=dtype)
        return self._storages[key]


def load_torch_file(path: str | os.PathLike, stand_ins: Iterable[str] = ()) -> Any:
    """Load a ``torch.save`` file, allowing only tensors, containers and the ``stand_ins`` class names.

    Files ``torch.load(weights_only=True)`` accepts are read by it; a file that
    names other globals (a pickled module, a path) goes through
    :class:`SafeUnpickler`, which needs the zip format (torch >= 1.6).
    """
    path = Path(path)
    check_source_file(path)
    if zipfile.is_zipfile(path):
        check_zip_bounds(path)  # before any member is read: a zip bomb is refused from its directory
        try:  # tensors and containers only: torch's own restricted reader takes it
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # other globals (a pickled module, a path), or damage: read it ourselves
            return _load_zip(path, stand_ins)
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        raise ZscirError(f"{path}: truncated or damaged torch checkpoint (a zip archive without its end "
                         f"record, {path.stat().st_size} bytes): download it again")
    # not a zip: a plain pickle, or torch's legacy format (a pickled magic number first)
    with open(path, "rb") as f:
        try:
            first = SafeUnpickler(f, None, "", stand_ins, str(path)).load()
        except UnsafePickleError:
            raise
        except Exception as e:
            raise ZscirError(f"{path}: not a torch checkpoint or pickle ({type(e).__name__}: {str(e)[:100]}); "
                             f"expected a torch.save file") from None
    if first != LEGACY_MAGIC:
        return first
    try:  # the legacy format's tensors need torch's reader: its own restricted unpickler
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        line = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ZscirError(f"{path}: legacy torch checkpoint that weights_only loading refuses: {line}") from None


def check_source_file(path: Path) -> None:
    if not path.is_file():
        raise ZscirError(f"source file not found: {path}")
    if path.stat().st_size == 0:
        raise ZscirError(f"{path} is empty (0 bytes): the download did not complete")


def check_zip_bounds(path: str | os.PathLike, option: str = "") -> None:
    """Refuse a zip archive whose members would expand beyond their bound, reading only its directory.

    Each member's declared size must fit in the archive (compressed) and expand at most
    :data:`MAX_ZIP_RATIO` times (members under :data:`ZIP_RATIO_FLOOR` bytes are free); readers
    (zipfile, torch) never produce more than the declared size.
    """
    where = f"{option} {path}" if option else str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ZscirError(f"{where}: corrupt zip archive ({e}): the file is truncated or damaged") from None
    total = os.path.getsize(path)
    for m in members:
        if m.compress_size > total:
            raise ZscirError(f"{where}: zip member {m.filename!r} declares {m.compress_size} compressed bytes in a "
                             f"{total}-byte file: the file is truncated or corrupt")
        if m.file_size > max(MAX_ZIP_RATIO * m.compress_size, ZIP_RATIO_FLOOR):
            raise ZscirError(f"{where}: zip member {m.filename!r} would expand from {m.compress_size} to "
                             f"{m.file_size} bytes (over {MAX_ZIP_RATIO}x; torch.save stores members uncompressed): "
                             f"refused as a zip bomb")


def _load_zip(path: Path, stand_ins: Iterable[str]) -> Any:
    try:
        archive = zipfile.ZipFile(path)
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ZscirError(f"{path}: corrupt zip archive ({e}): the file is truncated or damaged") from None
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if not pkl:
        raise ZscirError(f"{path}: a zip file but not a torch checkpoint (no data.pkl inside)")
    prefix = pkl[0][: -len("data.pkl")]
    byteorder = archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
    if byteorder != "little":
        raise ZscirError(f"{path}: big-endian checkpoints are not supported")
    try:
        data = archive.read(pkl[0])
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ZscirError(f"{path}: cannot read {pkl[0]} ({e}): the file is truncated or corrupt") from None
    try:
        return SafeUnpickler(io.BytesIO(data), archive, prefix, stand_ins, str(path)).load()
    except UnsafePickleError as e:
        if str(path) in str(e):
            raise
        raise UnsafePickleError(f"{path}: {e}", e.global_name) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            zipfile.BadZipFile) as e:
        raise ZscirError(f"{path}: corrupt pickle in {pkl[0]} ({type(e).__name__}: {str(e)[:120]})") from None


def module_state_dict(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """A stand-in ``nn.Module`` tree -> its state dict (parameters and persistent buffers, torch's key order)."""
    state: dict[str, torch.Tensor] = {}
    d = getattr(obj, "__dict__", {})
    non_persistent = d.get("_non_persistent_buffers_set") or set()
    for name, value in (d.get("_parameters") or {}).items():
        if value is not None:
            state[prefix + name] = value
    for name, value in (d.get("_buffers") or {}).items():
        if value is not None and name not in non_persistent:
            state[prefix + name] = value
    for name, child in (d.get("_modules") or {}).items():
        if child is not None:
            state.update(module_state_dict(child, f"{prefix}{name}."))
    return state


def stand_in_name(obj: Any) -> str | None:
    return getattr(obj, "stand_in_for", None) if isinstance(obj, StandIn) else None
