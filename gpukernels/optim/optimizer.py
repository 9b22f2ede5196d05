"""Optimizer: the base class of every optimizer, with PyTorch's interface.

An optimizer holds ``param_groups`` (a list of dicts: ``"params"`` plus the group's
hyper-parameters) and ``state`` (a dict keyed by parameter with the per-parameter
arrays: momentum buffers, moment estimates, step counts). ``step()`` walks the groups
and hands each parameter that has a gradient to the backend's update function
(``backend.kernels("optim", device)``), which updates ``param.data`` in place.

State arrays live on the device of their parameter, as raw arrays (``numpy.ndarray``
or ``cupy.ndarray``); ``state_dict()`` copies them to host NumPy arrays, so a
checkpoint pickles, and ``load_state_dict`` moves them back to the parameters' device.
"""

from __future__ import annotations

import copy
import numbers
import warnings
from collections import defaultdict

import numpy as np

from .. import backend
from ..tensor import Tensor, enable_grad, no_grad


class _RequiredParameter:
    """Marks a hyper-parameter without a default (every group must give it)."""

    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()

_SET_MESSAGE = (
    "optimizer parameters need to be organized in ordered collections, but the ordering "
    "of tensors in sets will change between runs. Please use a list instead."
)


def check_number(name, value, low=0.0, high=None, high_inclusive=False, label=None):
    """Raise ``ValueError`` unless ``low <= value`` (and ``value < high`` or ``<=``)."""
    label = label or f"{name} value"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Invalid {label}: {name} must be a real number, got {value!r}")
    ok = low <= value and (
        high is None or (value <= high if high_inclusive else value < high)
    )
    if not ok:  # NaN fails every comparison
        bound = f">= {low}" if high is None else (
            f"in [{low}, {high}{']' if high_inclusive else ')'}"
        )
        raise ValueError(f"Invalid {label}: {name}={value!r} (must be {bound})")


class Optimizer:
    """Base class of the optimizers (``torch.optim.Optimizer`` interface).

    Args:
        params: an iterable of Parameters (Tensors), of ``(name, Parameter)`` pairs, or
            of dicts, each a parameter group: ``{"params": [...], "lr": ..., ...}``;
            hyper-parameters a group does not give come from ``defaults``.
        defaults: the default hyper-parameters of every group.

    Subclasses implement ``_validate(group)`` (raise ``ValueError`` for bad
    hyper-parameters) and ``_update(param, grad, group, state)``.
    """

    def __init__(self, params, defaults: dict):
        self._validate(defaults)
        self.defaults = defaults
        if isinstance(params, Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors "
                f"or dicts, but got {type(params).__name__}"
            )
        if isinstance(params, (set, frozenset)):
            raise TypeError(_SET_MESSAGE)
        self.state: defaultdict = defaultdict(dict)
        self.param_groups: list[dict] = []
        groups = list(params)
        if len(groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # -- subclass hooks --------------------------------------------------------------------
    def _validate(self, group: dict) -> None:
        """Raise ``ValueError`` when a hyper-parameter of ``group`` is out of range."""

    def _update(self, param: Tensor, grad, group: dict, state: dict) -> None:
        """Update ``param.data`` (and ``state``) in place from the gradient array."""
        raise NotImplementedError

    # -- groups ----------------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        """Add a parameter group (a dict with ``"params"`` and optional hyper-parameters
        that override the defaults), e.g. to fine-tune layers unfrozen later.

        Args:
            param_group: ``{"params": iterable of Parameters, "lr": ..., ...}``.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry")
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(_SET_MESSAGE)
        params = list(params)
        names = [p[0] for p in params if isinstance(p, tuple)]
        params = [p[1] if isinstance(p, tuple) else p for p in params]
        if names:
            if len(names) != len(params):
                raise ValueError(
                    "all optimizer params should be with/without names. Some param names are missing"
                )
            group["param_names"] = names
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(
                    f"optimizer can only optimize Tensors, but one of the params is "
                    f"{type(p).__module__}.{type(p).__qualname__}"
                )
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        group["params"] = params
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(
                    f"parameter group didn't specify a value of required optimization "
                    f"parameter {name}"
                )
            group.setdefault(name, default)
        self._validate(group)
        if len({id(p) for p in params}) != len(params):
            warnings.warn(
                "optimizer contains a parameter group with duplicate parameters",
                stacklevel=3,
            )
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        if any("param_names" in g for g in self.param_groups) and (
            ("param_names" in group) != ("param_names" in self.param_groups[0])
        ):
            raise ValueError(
                "all optimizer param groups should be with/without names; cannot add a group "
                f"{'with' if 'param_names' in group else 'without'} names"
            )
        self.param_groups.append(group)

    # -- updates ---------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of every parameter.

        Args:
            set_to_none: set ``param.grad`` to ``None`` (the default, as in PyTorch)
                instead of filling it with zeros.
        """
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad = p.grad.detach()
                    p.grad.zero_()

    def step(self, closure=None):
        """Perform one optimization step on every parameter that has a gradient.

        Runs without recording autograd. Parameters whose ``grad`` is ``None`` are
        skipped (their state is not created or advanced).

        Args:
            closure: optional callable that re-evaluates the model and returns the
                loss; it runs with gradients enabled and its result is returned.
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        with no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    grad = p.grad.data if isinstance(p.grad, Tensor) else p.grad
                    if tuple(grad.shape) != p.shape:
                        raise ValueError(
                            f"{type(self).__name__}.step(): gradient has shape "
                            f"{tuple(grad.shape)}, its parameter has shape {p.shape}"
                        )
                    if backend.device_of(grad) != p.device:
                        raise ValueError(
                            f"{type(self).__name__}.step(): gradient is on "
                            f"{backend.device_of(grad)}, its parameter on {p.device}"
                        )
                    self._update(p, grad, group, self.state[p])
        return loss

    @staticmethod
    def _kernels(param):
        """The optimizer update functions for the device of ``param``."""
        return backend.kernels("optim", param.device)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The optimizer's state as a picklable dict, in PyTorch's layout.

        ``{"state": {index: {name: value}}, "param_groups": [{..., "params": [index]}]}``:
        parameters are numbered in the order of the groups; arrays are host NumPy
        copies, step counts plain ints.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {}
        for p, values in self.state.items():
            if id(p) in index:
                state[index[id(p)]] = {k: _to_host(v) for k, v in values.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state saved by ``state_dict()``.

        The parameter groups must have the same number of parameters as when saved, and
        every state array the shape of its parameter; arrays are copied to the device
        (and floating ones cast to the dtype) of their parameter. Hyper-parameters are
        restored from the saved groups.

        Args:
            state_dict: the dict returned by ``state_dict()``.
        """
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(
                "load_state_dict(): expected a dict with 'state' and 'param_groups', got "
                f"{type(state_dict).__name__}"
                + (f" with keys {sorted(state_dict)}" if isinstance(state_dict, dict) else "")
            )
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has a different number of parameter groups: "
                f"{len(saved_groups)} saved, the optimizer has {len(self.param_groups)}"
            )
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(
                    f"loaded state dict contains a parameter group that doesn't match the "
                    f"size of optimizer's group: group {i} has {len(saved['params'])} "
                    f"parameters saved, {len(group['params'])} in the optimizer"
                )
        id_map = {
            saved_id: p
            for group, saved in zip(self.param_groups, saved_groups)
            for saved_id, p in zip(saved["params"], group["params"])
        }
        state: defaultdict = defaultdict(dict)
        for key, values in state_dict["state"].items():
            if key not in id_map:
                raise ValueError(
                    f"loaded state dict has state for parameter {key!r}, which no "
                    f"parameter group lists (known: {sorted(id_map)})"
                )
            p = id_map[key]
            state[p] = {name: _to_param(p, key, name, v) for name, v in values.items()}
        new_groups = []
        for group, saved in zip(self.param_groups, saved_groups):
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
            self._validate(saved)
            new_groups.append(saved)
        self.state = state
        self.param_groups = new_groups

    def __repr__(self) -> str:
        text = type(self).__name__ + " ("
        for i, group in enumerate(self.param_groups):
            text += f"\nParameter Group {i}\n"
            for key in sorted(group):
                if key not in ("params", "param_names"):
                    text += f"    {key}: {group[key]}\n"
        return text + ")"


def _is_array(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "ndim")


def _to_host(value):
    """A host NumPy copy of an array (or Tensor); other values are deep-copied."""
    if isinstance(value, Tensor):
        value = value.data
    if _is_array(value) and not isinstance(value, np.generic):
        return np.array(backend.to_numpy(value), copy=True)
    return copy.deepcopy(value)


def _to_param(param, key, name, value):
    """Copy a saved state value next to ``param``: same device, floating dtype cast."""
    if isinstance(value, Tensor):
        value = value.data
    if not _is_array(value) or isinstance(value, np.generic):
        return copy.deepcopy(value)
    if tuple(value.shape) != param.shape:
        raise ValueError(
            f"loaded state dict: state {name!r} of parameter {key!r} has shape "
            f"{tuple(value.shape)}, the parameter has shape {param.shape}"
        )
    xp = backend.xp_for_device(param.device)
    dtype = param.dtype if np.dtype(value.dtype).kind == "f" else value.dtype
    out = xp.empty(param.shape, dtype=dtype)
    out[...] = xp.asarray(backend.to_device(value, param.device))
    return out
