"""Module: the base of every layer and model, with PyTorch's registration rules.

Assigning a ``Parameter`` or a ``Module`` to an attribute registers it; buffers
(running statistics) are registered with ``register_buffer``. Names are dotted paths
(``features.0.weight``), the same keys a PyTorch ``state_dict`` uses.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator

from .. import backend
from ..dtypes import FLOATS, as_dtype, bfloat16, dtype_name, float16, float32, float64
from ..kernels import cast_array
from ..tensor import Tensor
from .parameter import Parameter


class Module:
    """Base class: subclasses set parameters/submodules in ``__init__`` and define ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration --------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        for store in (self._parameters, self._buffers, self._modules):
            store.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self.__dict__.get("_buffer_names", ()) and isinstance(value, Tensor):
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        for store in ("_parameters", "_buffers", "_modules"):
            values = self.__dict__.get(store)
            if values is not None and name in values:
                return values[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        if param is None:
            self._parameters[name] = None
        else:
            setattr(self, name, param)

    def register_buffer(self, name: str, tensor: Tensor | None) -> None:
        """Register non-learnable state (saved in ``state_dict``, moved by ``to``)."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer('{name}'): expected a Tensor or None, got {type(tensor).__name__}")
        self.__dict__.setdefault("_buffer_names", set()).add(name)
        self.__dict__.pop(name, None)
        self._buffers[name] = tensor

    def add_module(self, name: str, module: Module | None) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module('{name}'): expected a Module, got {type(module).__name__}")
        self._modules[name] = module

    # -- traversal -----------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop(0)
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(f"{name}.{n}" if name else n, m) for n, m in module._modules.items() if m is not None]
            stack[0:0] = children

    def modules(self) -> Iterator[Module]:
        return (m for _, m in self.named_modules())

    def named_children(self) -> Iterator[tuple[str, Module]]:
        return ((n, m) for n, m in self._modules.items() if m is not None)

    def children(self) -> Iterator[Module]:
        return (m for _, m in self.named_children())

    def _named(self, store: str, recurse: bool):
        seen = set()
        modules = self.named_modules() if recurse else [("", self)]
        for prefix, module in modules:
            for name, value in getattr(module, store).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{prefix}.{name}" if prefix else name), value

    def named_parameters(self, recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        return self._named("_parameters", recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        return (p for _, p in self.named_parameters(recurse))

    def named_buffers(self, recurse: bool = True) -> Iterator[tuple[str, Tensor]]:
        return self._named("_buffers", recurse)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        return (b for _, b in self.named_buffers(recurse))

    # -- modes and grads -----------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        if not isinstance(mode, bool):
            raise ValueError(f"train(): mode must be a bool, got {mode!r}")
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.data[...] = 0

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def apply(self, fn) -> Module:
        for module in list(self.modules())[::-1]:
            fn(module)
        return self

    def to(self, device=None, dtype=None) -> Module:
        """Move and/or cast the parameters and buffers in place; returns self.

        ``to(device)``, ``to(dtype)``, ``to(device, dtype)`` or ``to(tensor)`` (its device
        and dtype), as PyTorch's. A dtype must be a floating one and casts only the
        floating-point parameters and buffers (bf16 bits included); integer buffers such
        as ``num_batches_tracked`` keep theirs. The Parameters stay the same objects, so
        an optimizer built before keeps updating them (a flat buffer moves whole), and
        gradients follow their parameter. A tensor whose data this replaces counts one
        in-place change (its version), as ``load_state_dict`` does: a graph recorded
        before refuses its backward instead of mixing old and new arrays.
        """
        if isinstance(device, Tensor) and dtype is None:
            device, dtype = device.device, device.dtype
        elif device is not None and not isinstance(device, str) and dtype is None:
            device, dtype = None, device  # to(float64)
        device = backend.normalize_device(device) if device is not None else None
        if dtype is not None:
            dtype = as_dtype(dtype)
            if dtype not in FLOATS:
                raise TypeError(f"{type(self).__name__}.to: dtype must be a floating-point dtype (float16, "
                                f"bfloat16, float32, float64), got {dtype_name(dtype)}")
        tensors = {id(t): t for _, m in self.named_modules() for store in (m._parameters, m._buffers)
                   for t in store.values() if t is not None}
        before = {key: t.data for key, t in tensors.items()}
        moved = self._move_flat_parameters(device, dtype)
        for key, t in tensors.items():
            if key in moved:
                continue
            data = t.data
            if dtype is not None and data.dtype in FLOATS:
                data = cast_array(data, dtype)  # bf16 bits included
            if device is not None:
                data = backend.to_device(data, device)
            if data is t.data:
                continue
            t.data = data
            if t.grad is not None:
                t.grad = None if data.shape != t.grad.shape else Tensor(
                    backend.to_device(cast_array(t.grad.data, data.dtype), backend.device_of(data)))
        bumped = set()  # one count per counter: a flat buffer's parameters share one
        for key, t in tensors.items():
            if t.data is not before[key] and id(t._version_counter()) not in bumped:
                bumped.add(id(t._version_counter()))
                t._bump_version()
        return self

    def double(self) -> Module:
        """Cast the floating-point parameters and buffers to float64 in place (``to``)."""
        return self.to(dtype=float64)

    def float(self) -> Module:
        """Cast the floating-point parameters and buffers to float32 in place (``to``)."""
        return self.to(dtype=float32)

    def half(self) -> Module:
        """Cast the floating-point parameters and buffers to float16 in place (``to``)."""
        return self.to(dtype=float16)

    def bfloat16(self) -> Module:
        """Cast the floating-point parameters and buffers to bfloat16 (uint16 bits) in
        place (``to``)."""
        return self.to(dtype=bfloat16)

    def cpu(self) -> Module:
        return self.to("cpu")

    def cuda(self) -> Module:
        return self.to("cuda")

    def _move_flat_parameters(self, device, dtype) -> set:
        """Move the parameters an optimizer keeps as views of one flat buffer
        (``gpukernels.optim.flat``) as that buffer, with its gradient and state buffers,
        so they stay views of one buffer; returns the ids of the parameters moved. A
        buffer only part of whose parameters belong to this module is left to the
        per-tensor path (its optimizer rebuilds it at the next step)."""
        params = list(self.parameters())
        members = {id(p) for p in params}
        moved, seen = set(), set()
        for p in params:
            ref = getattr(p, "_flat", None)
            flat = ref() if ref is not None else None
            if flat is None or id(flat) in seen:
                continue
            seen.add(id(flat))
            if flat.move(members, device, dtype):
                moved.update(id(q) for q in flat.params)
        return moved

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict:
        """Parameters and buffers by dotted name, as detached tensors sharing memory.

        Copy them (``{k: v.numpy().copy() ...}``) to keep a snapshot across later steps.
        """
        state = OrderedDict()
        for prefix, module in self.named_modules():
            for store in (module._parameters, module._buffers):
                for name, t in store.items():
                    if t is not None:
                        state[f"{prefix}.{name}" if prefix else name] = t.detach()
        return state

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy values into the existing parameters and buffers (in place, shape-checked).

        Values may be Tensors or arrays. With ``strict``, missing and unexpected keys are
        an error; the result lists both, as PyTorch's.
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(
                f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
            )
        for key, target in own.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            value = value.data if isinstance(value, Tensor) else value
            if tuple(value.shape) != target.shape:
                raise ValueError(
                    f"load_state_dict: '{key}' has shape {tuple(value.shape)} in the "
                    f"state_dict, but {target.shape} in the model"
                )
            xp = backend.get_array_module(target.data)
            value = xp.asarray(backend.to_device(value, backend.device_of(target.data)))
            if value.dtype != target.dtype and value.dtype in FLOATS and target.dtype in FLOATS:
                value = cast_array(value, target.dtype)  # as copy_ casts: bf16 bits are not integers
            target.data[...] = value
            target._bump_version()  # shared with the parameter: graphs that saved it see the change
        return missing, unexpected

    # -- calling -------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        head = f"{type(self).__name__}(" + (f"{extra}" if extra else "")
        return head + "\n  " + "\n  ".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied one after the other; indexable and iterable."""

    def __init__(self, *modules: Module):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (OrderedDict, dict)):
            for name, module in modules[0].items():
                self.add_module(name, module)
        else:
            for i, module in enumerate(modules):
                self.add_module(str(i), module)

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x

    def __getitem__(self, index):
        items = list(self._modules.values())
        return Sequential(*items[index]) if isinstance(index, slice) else items[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module: Module) -> Sequential:
        self.add_module(str(len(self)), module)
        return self
