"""Saving and loading state: ``gk.save(obj, path)`` / ``gk.load(path)``, in safetensors.

    gk.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, "run.st")
    state = gk.load("run.st")          # the same nested dicts, lists and tuples back
    model.load_state_dict(state["model"]); opt.load_state_dict(state["optimizer"])

The file is a plain safetensors file (https://huggingface.co/docs/safetensors), the format
PyTorch and Hugging Face users load (``safetensors.torch.load_file``):

- every tensor and array of ``obj`` is a safetensors tensor named by its path in ``obj``,
  joined with dots (``conv1.weight``, ``optimizer.state.0.exp_avg``), stored little-endian
  as F16/F32/F64, I8...I64, U8...U64 or BOOL; a bfloat16 Tensor (gpukernels keeps bf16 as
  uint16 bit patterns) is stored as safetensors' ``BF16``, so torch reads it as
  ``torch.bfloat16``;
- everything else (numbers, strings, None, dicts, lists, tuples: epochs, hyper-parameters,
  RNG states) is JSON in the header's ``__metadata__``: ``"gpukernels"`` holds
  ``{"version": 1, "tree": ...}``, where ``tree`` is ``obj`` with each tensor replaced by
  ``{"__tensor__": name, "kind": "tensor" | "array" | "scalar"}`` (a gpukernels Tensor, a
  NumPy array, a NumPy scalar), each tuple by ``{"__tuple__": [...]}`` and each dict whose
  keys are not all strings (the optimizer's ``state`` is keyed by int) by
  ``{"__dict__": [[key, value], ...]}``; ``"format"`` is ``"pt"`` (the layout is
  PyTorch's: Conv2d weights (out, in, kh, kw), Linear weights (out, in));
- ``"sha256"`` is the hex SHA-256 of the tensor bytes (the data buffer after the header,
  in file order) followed by the header itself without ``sha256`` (the tensor table and
  the other metadata, as ``json.dumps(header, sort_keys=True, separators=(",", ":"))``):
  ``load`` recomputes it, so one flipped bit anywhere in the tensors, the shapes or the
  metadata is an error, not a silently different state.

``load`` never unpickles: it parses the safetensors header (through the ``safetensors``
package, which validates offsets and sizes) and JSON, nothing else. A file that is not
safetensors (a pickle, a ``torch.save`` zip, a truncated file), an unknown format
version, a checksum mismatch, a tensor the metadata names but the file lacks, or one the
file holds but the metadata does not name raises ``CheckpointError`` (a ``ValueError``)
naming the file and what is wrong. A safetensors file without gpukernels metadata (one
written by ``safetensors.torch.save_file``) loads as a flat ``{name: Tensor}`` dict.

Writes are atomic (``atomic_write``): a temp file ``.<name>.<pid>-<random>.tmp`` in the
same directory, written, flushed and fsynced, renamed over ``path`` (``os.replace``),
then the directory fsynced; a failure (a full disk: ``ENOSPC``) removes the temp file and
leaves the previous file intact. Temp files left by a killed writer (a process no longer
alive on this machine) are removed by the next write (``remove_stale_temps``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import tempfile

import numpy as np

from . import backend
from .dtypes import bfloat16
from .tensor import Tensor

__all__ = ["save", "load", "CheckpointError", "atomic_write", "remove_stale_temps", "FORMAT_VERSION"]

#: The version of the metadata layout ``save`` writes and ``load`` reads.
FORMAT_VERSION = 1

_META_KEY = "gpukernels"
_ST_DTYPES = {  # NumPy dtype -> safetensors dtype (bf16 is decided by the Tensor, not here)
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8",
    np.dtype(np.uint16): "U16", np.dtype(np.int16): "I16",
    np.dtype(np.uint32): "U32", np.dtype(np.int32): "I32",
    np.dtype(np.uint64): "U64", np.dtype(np.int64): "I64",
    np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.float64): "F64",
}
_NP_DTYPES = {st: dtype.newbyteorder("<") for dtype, st in _ST_DTYPES.items()}
_NP_DTYPES["BF16"] = np.dtype(bfloat16).newbyteorder("<")
_MARKERS = ("__tensor__", "__tuple__", "__dict__")
_KINDS = ("tensor", "array", "scalar")


class CheckpointError(ValueError):
    """A file ``load`` refuses: ``path`` and ``reason`` (one line); ``str()`` gives both."""

    def __init__(self, path, reason):
        self.path, self.reason = str(path), " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")


# ----------------------------------------------------------------------------- atomic writes

_TEMP_RE = re.compile(r"(?:(\d+)-)?[a-z0-9_]{8}")  # mkstemp's 8 random characters


def _temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # someone else's process (or a pid we cannot test): leave its file
    return True


def remove_stale_temps(path, include_own: bool = False) -> list[str]:
    """Remove the temp files ``atomic_write`` left beside ``path`` when its process was
    killed mid-write (``.<name>.<pid>-<random>.tmp`` of a pid no longer alive, and the
    pid-less ``.<name>.<random>.tmp`` of older versions); ``include_own``: also this
    process's (call it before this process writes anything, e.g. at start: a restarted
    container can get the pid of the run it replaces). Returns the removed paths."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        match = _TEMP_RE.fullmatch(name[len(prefix):-len(".tmp")])
        if match is None:
            continue  # another file's temp (".run.ckpt.bak.<random>.tmp"), or not ours
        pid = int(match.group(1)) if match.group(1) else None
        if pid is not None and (pid != os.getpid() or not include_own) and _alive(pid):
            continue  # a write in progress
        try:
            os.unlink(os.path.join(folder, name))
            removed.append(os.path.join(folder, name))
        except FileNotFoundError:
            pass
    return removed


def _fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (where directories can be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # e.g. Windows: a directory cannot be opened
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def atomic_write(path, write) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, then rename it over ``path``:
    a crash, a kill or a full disk leaves the previous file intact.

    The temp file ``.<name>.<pid>-<random>.tmp`` is flushed and fsynced before the
    rename, the directory fsynced after it; on any error it is removed and the error
    re-raised. Stale temp files of killed writers are removed first."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)  # mkstemp makes the file 0600: give it a plain open()'s mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)


# ----------------------------------------------------------------------------- save


def _is_array(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "ndim")


def _where(path) -> str:
    return ".".join(map(str, path)) or "the top level"


def _add_tensor(tensors, path, array, st_dtype, kind):
    name = ".".join(map(str, path)) or "tensor"
    if name == "__metadata__":
        raise ValueError("gk.save: '__metadata__' is safetensors' reserved name; rename that entry")
    if name in tensors:
        raise ValueError(f"gk.save: two entries map to the tensor name {name!r}: keys with "
                         "dots that collide with nesting; rename one")
    if not array.flags.c_contiguous:
        array = array.copy(order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    tensors[name] = (st_dtype, array)
    return {"__tensor__": name, "kind": kind}


def _st_dtype(dtype, path) -> str:
    try:
        return _ST_DTYPES[np.dtype(dtype).newbyteorder("=")]
    except KeyError:
        raise TypeError(f"gk.save: {_where(path)} has dtype {np.dtype(dtype)}, which safetensors "
                        "cannot store") from None


def _encode(obj, path, tensors):
    """``obj`` as JSON-able data, its tensors moved into ``tensors`` (see the module doc)."""
    if isinstance(obj, Tensor):
        host = backend.to_numpy(obj.data)
        st = "BF16" if obj.dtype == bfloat16 else _st_dtype(obj.dtype, path)
        return _add_tensor(tensors, path, host, st, "tensor")
    if isinstance(obj, np.generic):
        return _add_tensor(tensors, path, np.asarray(obj), _st_dtype(obj.dtype, path), "scalar")
    if _is_array(obj):  # numpy.ndarray, cupy.ndarray
        host = np.asarray(backend.to_numpy(obj))
        return _add_tensor(tensors, path, host, _st_dtype(host.dtype, path), "array")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, (*path, i), tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k in _MARKERS for k in obj):
            return {k: _encode(v, (*path, k), tensors) for k, v in obj.items()}
        for k in obj:
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise TypeError(f"gk.save: {_where(path)} has a key of type {type(k).__name__}; "
                                "keys must be str, int, float, bool or None")
        return {"__dict__": [[k, _encode(v, (*path, k), tensors)] for k, v in obj.items()]}
    raise TypeError(f"gk.save: cannot save a {type(obj).__name__} (at {_where(path)}): only "
                    "Tensors, arrays, NumPy scalars, dicts, lists, tuples, str, int, float, "
                    "bool and None are saved (nothing is pickled)")


def _checksum(buffers, header: dict) -> str:
    """SHA-256 of the tensor bytes, then of ``header`` (the safetensors header without
    ``sha256``) as compact JSON with sorted keys."""
    digest = hashlib.sha256()
    for buf in buffers:
        digest.update(buf)
    digest.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def _write_all(f, chunks) -> None:
    """Write ``chunks`` (bytes-like) to ``f`` in order (tests replace this to simulate a
    full disk or a slow one)."""
    for chunk in chunks:
        f.write(chunk)


def save(obj, path) -> None:
    """Save ``obj`` (a state_dict, an optimizer state_dict, or dicts/lists/tuples of
    them and of plain values) to ``path`` as a safetensors file, atomically.

    Tensors and arrays become safetensors tensors named by their dotted path in ``obj``
    (on the host, bf16 as ``BF16``), the rest JSON metadata with a SHA-256 of the whole
    content; see the module docstring for the layout. Nothing is pickled: any other
    type is a ``TypeError``.
    """
    tensors: dict = {}
    tree = _encode(obj, (), tensors)
    meta_json = json.dumps({"version": FORMAT_VERSION, "tree": tree}, separators=(",", ":"))
    # widest dtypes first: every tensor starts at a multiple of its itemsize
    order = sorted(tensors, key=lambda n: (-tensors[n][1].itemsize, n))
    table, buffers, offset = {}, [], 0
    for name in order:
        st_dtype, array = tensors[name]
        data = array.reshape(-1).view(np.uint8)
        table[name] = {"dtype": st_dtype, "shape": [int(d) for d in array.shape],
                       "data_offsets": [offset, offset + int(data.size)]}
        buffers.append(memoryview(data))
        offset += int(data.size)
    header = {"__metadata__": {"format": "pt", _META_KEY: meta_json}, **table}
    header["__metadata__"]["sha256"] = _checksum(buffers, header)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data buffer starts 8-byte aligned
    atomic_write(path, lambda f: _write_all(f, [len(head).to_bytes(8, "little"), head, *buffers]))


# ----------------------------------------------------------------------------- load


def _describe_foreign(data: bytes) -> str | None:
    """What a file safetensors refused looks like, when it is recognisably something else."""
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return ("it is a Python pickle: an older gpukernels checkpoint or a crafted file; "
                "pickles are never loaded, since unpickling can run arbitrary code")
    if data[:4] == b"PK\x03\x04":
        return "it is a zip archive (torch.save's format?), not a safetensors file"
    return None


def _diagnose(data: bytes, exc: Exception) -> str:
    """Why safetensors refused ``data``, in words (truncated, a pickle, ...)."""
    foreign = _describe_foreign(data)
    if foreign:
        return foreign
    if not data:
        return "empty (0 bytes): truncated, or never written"
    if len(data) < 8:
        return f"truncated: {len(data)} bytes, not even safetensors' 8-byte header length"
    size = int.from_bytes(data[:8], "little")
    if 8 + size > len(data):
        return (f"truncated or not a safetensors file: its first 8 bytes give a {size}-byte "
                f"header, the file has {len(data)} bytes in all")
    try:
        header = json.loads(data[8:8 + size])
        end = 8 + size + max([0] + [int(v["data_offsets"][1]) for k, v in header.items()
                                    if k != "__metadata__"])
    except Exception:  # noqa: BLE001 - only for the message: the parser's own words then
        end = None
    if end is not None and end > len(data):
        return f"truncated: {len(data)} bytes, its header describes {end}"
    if end is not None and end < len(data):
        return f"{len(data) - end} byte(s) after its last tensor: not a file gk.save wrote"
    return f"not a valid safetensors file ({exc})"


def _decode(node, tensors, used, path):
    if isinstance(node, list):
        return [_decode(v, tensors, used, path) for v in node]
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        name, kind = node.get("__tensor__"), node.get("kind")
        if set(node) != {"__tensor__", "kind"} or not isinstance(name, str) or kind not in _KINDS:
            raise CheckpointError(path, f"malformed tensor reference in the metadata: {node!r:.120}")
        if name not in tensors:
            raise CheckpointError(path, f"the metadata names tensor {name!r}, which the file "
                                        "does not hold")
        used.add(name)
        array = tensors[name]
        if kind == "tensor":
            return Tensor(array)
        return array[()] if kind == "scalar" else array
    if "__tuple__" in node:
        if set(node) != {"__tuple__"} or not isinstance(node["__tuple__"], list):
            raise CheckpointError(path, f"malformed tuple in the metadata: {node!r:.120}")
        return tuple(_decode(v, tensors, used, path) for v in node["__tuple__"])
    if "__dict__" in node:
        items = node["__dict__"]
        if set(node) != {"__dict__"} or not isinstance(items, list) or not all(
                isinstance(kv, list) and len(kv) == 2 and not isinstance(kv[0], (list, dict))
                for kv in items):
            raise CheckpointError(path, f"malformed dict in the metadata: {node!r:.120}")
        return {k: _decode(v, tensors, used, path) for k, v in items}
    return {k: _decode(v, tensors, used, path) for k, v in node.items()}


def load(path):
    """Load what ``save`` wrote at ``path`` (or in a binary file object): the same nested
    dicts, lists and tuples, with Tensors (bf16 ones as bf16), NumPy arrays and scalars
    where they were, on the host (``load_state_dict`` copies them to the device).

    A safetensors file without gpukernels metadata gives ``{name: Tensor}``. Raises
    ``CheckpointError`` (a ``ValueError`` naming the file and the problem) for anything
    that is not an intact gpukernels or safetensors file, ``OSError`` when the file
    cannot be read. Never unpickles.
    """
    try:
        from safetensors import deserialize  # noqa: PLC0415 - optional until a file is loaded
    except ImportError:
        raise ImportError("gk.load needs the safetensors package: pip install safetensors") from None
    if hasattr(path, "read"):  # a binary file object (io.BytesIO), as torch.load takes
        data, path = bytes(path.read()), getattr(path, "name", "<file object>")
    else:
        path = os.fspath(path)
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise CheckpointError(path, "not a regular file")
            data = f.read()
    try:
        entries = deserialize(data)
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size])
    except Exception as exc:  # the Rust parser's SafetensorError, or anything a bad header raises
        raise CheckpointError(path, _diagnose(data, exc)) from None
    metadata = header.get("__metadata__") or {}
    tensors, dtypes = {}, {}
    for name, entry in entries:
        dtype = _NP_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise CheckpointError(path, f"tensor {name!r} has dtype {entry['dtype']}, which "
                                        "gpukernels does not read")
        array = np.frombuffer(entry["data"], dtype=dtype).reshape(entry["shape"])
        array = array.astype(dtype.newbyteorder("="), copy=False)  # a no-op on little-endian hosts
        tensors[name] = array if array.flags.writeable else array.copy()
        dtypes[name] = entry["dtype"]
    if _META_KEY not in metadata and "sha256" not in metadata:  # e.g. safetensors.torch.save_file
        # a uint16 Tensor is bf16 here: a U16 tensor stays a NumPy array
        return {name: array if dtypes[name] == "U16" else Tensor(array)
                for name, array in sorted(tensors.items())}

    meta_json, expected = metadata.get(_META_KEY), metadata.pop("sha256", None)
    if not isinstance(meta_json, str) or not isinstance(expected, str):
        raise CheckpointError(path, "has only one of the 'gpukernels' and 'sha256' metadata "
                                    "entries (corrupted, or not written by gk.save)")
    # the checksum first (its definition is the same in every format version): a corrupted
    # file is reported as corrupted, whatever its damaged metadata now says
    actual = _checksum([memoryview(data)[8 + size:]], header)
    if actual != expected:
        raise CheckpointError(path, f"SHA-256 mismatch: stored {expected[:16]}..., content "
                                    f"{actual[:16]}...; the file was corrupted or changed "
                                    "after it was written")
    try:
        meta = json.loads(meta_json)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(path, f"its gpukernels metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or "tree" not in meta or "version" not in meta:
        raise CheckpointError(path, "its gpukernels metadata lacks 'version' or 'tree'")
    if meta["version"] != FORMAT_VERSION:
        raise CheckpointError(path, f"format version {meta['version']!r:.40} is not one this "
                                    f"gpukernels reads (it reads {FORMAT_VERSION}): written by "
                                    "another version?")
    used: set = set()
    try:
        obj = _decode(meta["tree"], tensors, used, path)
    except RecursionError:
        raise CheckpointError(path, "its metadata is nested too deeply") from None
    extra = sorted(set(tensors) - used)
    if extra:
        raise CheckpointError(path, f"holds {len(extra)} tensor(s) its metadata does not name: "
                                    f"{', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}")
    return obj
