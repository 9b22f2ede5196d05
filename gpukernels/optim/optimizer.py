"""Optimizer: the base class of every optimizer, with PyTorch's interface.

An optimizer holds ``param_groups`` (a list of dicts: ``"params"`` plus the group's
hyper-parameters) and ``state`` (a dict keyed by parameter with the per-parameter
arrays: momentum buffers, moment estimates, step counts).

Flat buffers (``flat.py``): when a group is added, its parameters are copied into one
contiguous buffer per (device, dtype) and each ``param.data`` becomes a view of it;
gradients and state arrays get buffers of the same layout. ``step()`` then makes one
call of the backend's update function (``kernels.optim.for_device(device)``) per
buffer: one Triton launch on the GPU whatever the number of parameter tensors. Take
views of ``param.data`` after constructing the optimizer, not before (as with apex's
and DeepSpeed's flat buffers).

What ``step()`` does per buffer, in order:

1. check (object identity) that every parameter still is its view, else rebuild the
   buffer, copying values, gradients and state (``Module.to`` moves whole buffers, so
   it needs no rebuild; ``p.data = ...`` does);
2. copy in any gradient that is not its slice of the gradient buffer (one the user
   assigned); parameters whose ``grad`` is ``None`` are left out, as ``torch.optim``
   does: their parameter and state are neither read nor written and their step count
   does not advance;
3. with ``max_grad_norm``, one reduction over every gradient gives the global norm and
   the clipping coefficient (left on the device: no host synchronisation), which each
   update multiplies into the gradient it reads;
4. one update call over the whole buffer; when some parameters have no gradient, over
   the element ranges of those that have one (still one call: the Triton kernels take a
   table of ranges); when parameters of one buffer have different step counts (one
   joined later), one call per distinct step count.

State arrays live on the device of their parameter, as raw arrays (``numpy.ndarray``
or ``cupy.ndarray``) that are views of the state buffers; ``state_dict()`` copies them
to host NumPy arrays, so a checkpoint pickles, and ``load_state_dict`` copies them back
into the buffers.

CUDA graphs (``capturable=True``, PyTorch's option; ``gpukernels.cuda_graph`` records
``step()`` once and replays it): a graph bakes every kernel argument, so nothing that
changes from step to step may reach a kernel as a host value. Adam / AdamW / Adagrad
with ``capturable=True`` keep each parameter's step count on the device
(``state[p]["step"]``: a 0-d float32 view of the flat buffer's ``steps``) and the
update call advances it there and derives the bias corrections / decayed rate from it
(``gpukernels.triton.optim``: a one-program kernel before the update); ``step()`` then
reads no device value on the host. Parameters are grouped into one call per *cohort*
(parameters whose counts are equal because they were created, or loaded, with equal
counts and stepped together ever since), tracked on the host without reading the
counts. While ``cuda_graph.capturing()``, ``step()`` refuses what a replay would get
wrong: a non-capturable optimizer whose update depends on the step, state created now
(a replay would create it again: run an eager step first), a buffer rebuilt now,
clipping over several devices (its norm is combined on the host). Hyper-parameters
(``lr``, betas, ...) are Python floats, so a graph keeps the values it was captured
with, as in PyTorch.
"""

from __future__ import annotations

import copy
import itertools
import math
import numbers
import warnings
from collections import defaultdict

import numpy as np

from .. import backend, cuda_graph, kernels
from ..autograd import enable_grad, no_grad
from ..tensor import Tensor
from .flat import FlatParams

#: Words for the state whose creation a graph capture refuses (in its message).
_STATE_WORDS = {"momentum_buffer": "momentum buffers", "exp_avg": "first moments (exp_avg)",
                "exp_avg_sq": "second moments (exp_avg_sq)", "max_exp_avg_sq": "AMSGrad maxima (max_exp_avg_sq)",
                "square_avg": "square averages (square_avg)", "grad_avg": "gradient averages (grad_avg)",
                "sum": "accumulators (sum)", "step": "step counts"}


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
        max_grad_norm: clip the gradients to this global 2-norm before each update, as
            ``torch.nn.utils.clip_grad_norm_(params, max_norm)`` before ``step()`` would
            (the name of Hugging Face's ``TrainingArguments.max_grad_norm``), but fused:
            one reduction over the flat gradient buffers, the coefficient
            ``min(1, max_norm / (norm + 1e-6))`` multiplied into the gradient the update
            reads. Unlike ``clip_grad_norm_`` the ``.grad`` arrays are not modified. The
            norm is over every parameter of every group that has a gradient; it is kept
            (on the device, unsynchronised) as ``last_grad_norm``. ``None``: no clipping.

    Subclasses implement ``_validate(group)`` (raise ``ValueError`` for bad
    hyper-parameters), ``_state_specs(group)`` (the state buffers and their initial
    values), ``_prepare(param, state, group, flat, index, fresh)`` (create a parameter's
    state, advance its step; returns the key of the launch it joins) and
    ``_launch(kernels, flat, group, key, segments, grad_scale, indices)`` (one update
    call); for CUDA graphs, ``_step_dependent(group)`` / ``_capture_reason`` (what a
    replay of a non-capturable update would get wrong) and ``_device_steps(group)``
    (the step counts live on the device: ``capturable=True`` of an optimizer whose
    update depends on the step).
    """

    def __init__(self, params, defaults: dict, *, max_grad_norm=None):
        self._validate(defaults)
        self.defaults = defaults
        if max_grad_norm is not None:
            check_number("max_grad_norm", max_grad_norm)
            if max_grad_norm == 0:
                raise ValueError("Invalid max_grad_norm: max_grad_norm=0 (must be > 0, or None)")
        self.max_grad_norm = max_grad_norm
        self.last_grad_norm = None
        # capturable: each parameter's cohort token (equal tokens: equal device step
        # counts), the step() calls so far, fresh tokens
        self._cohorts: dict = {}
        self._calls = 0
        self._tokens = itertools.count()
        # per param group: (ids of its parameters, [FlatParams, one per device and dtype])
        self._flat: list = []
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

    def _state_specs(self, group: dict) -> dict:
        """``{name: initial value}`` of the state buffers ``group``'s update needs."""
        return {}

    def _prepare(self, param, state: dict, group: dict, flat: FlatParams, index: int, fresh: dict):
        """Create ``param``'s state entries (views: ``flat.slot(name, index, reset=not
        fresh[name])``), advance its step; return the key of the launch it joins (the
        parameters with equal keys are updated by one call)."""
        raise NotImplementedError

    def _launch(self, kernels, flat: FlatParams, group: dict, key, segments, grad_scale, indices) -> None:
        """One update call of ``kernels`` over ``flat`` (only ``segments`` when given;
        ``indices``: the parameters it updates)."""
        raise NotImplementedError

    def _step_dependent(self, group: dict) -> bool:
        """Whether ``group``'s update uses a scalar that changes with the step count (a
        CUDA graph of a non-capturable step would replay step N's value forever)."""
        return False

    #: what a replay of a non-capturable, step-dependent update would freeze
    _capture_reason = "its step-dependent scalars would stay those of step N"

    def _device_steps(self, group: dict) -> bool:
        """Whether ``group``'s step counts live on the device (``capturable=True`` of an
        optimizer whose update uses the count)."""
        return False

    # -- step counts -----------------------------------------------------------------------
    def _new_step(self, param, flat: FlatParams, index: int, group: dict):
        """A new parameter's step count: ``0`` on the host, or (device steps) its slot of
        ``flat.steps`` set to 0."""
        if not self._device_steps(group):
            return 0
        flat.ensure_steps()
        view = flat.step_views[index]
        view.fill(0)
        self._cohorts[id(param)] = ("init", 0, self._calls)
        return view

    def _advance_step(self, param, state: dict, group: dict):
        """Host counts: ``step += 1``, returns the new count (the update's launch key:
        one call per distinct count). Device counts: the update call advances them;
        returns the parameter's cohort token (equal tokens, equal counts)."""
        if self._device_steps(group):
            token = self._cohorts.get(id(param))
            if token is None:  # a count nothing tells us about: a launch of its own
                token = self._cohorts[id(param)] = ("own", next(self._tokens))
            return token
        step = state["step"]
        if _is_array(step) or isinstance(step, Tensor):  # was capturable (group changed)
            state["step"] = step = _step_number(step)
        state["step"] = step + 1
        return state["step"]

    def _adopt_steps(self, flat: FlatParams) -> None:
        """Make every device count of ``flat`` a view of ``flat.steps`` (copying in
        host numbers and foreign arrays); a host number ``v`` gives the cohort token
        ("init", v, calls), shared by every parameter given ``v`` now."""
        for i, value in flat.adopt_steps(self.state):
            self._cohorts[id(flat.params[i])] = ("init", value, self._calls)

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
        self._group_flats(len(self.param_groups) - 1)

    # -- flat buffers ----------------------------------------------------------------------
    def _group_flats(self, index: int) -> list:
        """The flat buffers of param group ``index``, rebuilt when a parameter no longer
        is its view or the group's parameter list changed."""
        key = tuple(map(id, self.param_groups[index]["params"]))  # cheap: checked every step
        while len(self._flat) <= index:
            self._flat.append(None)
        entry = self._flat[index]
        if entry is not None and entry[0] == key and all(f.valid() for f in entry[1]):
            return entry[1]
        if entry is not None and cuda_graph.capturing():
            raise RuntimeError(
                f"{type(self).__name__}.step() cannot be captured in a CUDA graph while its flat "
                "buffers must be rebuilt (a parameter's .data was rebound, or the group's parameters "
                "changed): a replay would copy the old values again; run an eager step before capture"
            )
        params = list({id(p): p for p in self.param_groups[index]["params"]}.values())
        parts: dict = {}
        for p in params:  # one buffer per (device, dtype), in the group's order
            parts.setdefault((p.device, p.data.dtype), []).append(p)
        flats = [FlatParams(members, owner=self) for members in parts.values()]
        for flat in flats:
            self._load_flat_state(flat, self.param_groups[index])
        self._flat[index] = (key, flats)
        return flats

    def _load_flat_state(self, flat: FlatParams, group: dict) -> None:
        """(Re)allocate ``flat``'s state buffers for the state arrays its parameters
        have, copy those arrays in and make the state hold the views; slots of
        parameters without state start at the initial value."""
        specs = self._state_specs(group)
        names = []
        for p in flat.params:
            for name, value in self.state.get(p, {}).items():
                if name != "step" and _is_array(value) and tuple(value.shape) == p.shape and name not in names:
                    names.append(name)
        flat.state.clear()
        flat.state_views.clear()
        for name in names:
            flat.ensure_state(name, specs.get(name, 0.0))
        flat.adopt(self.state, names)
        if self._device_steps(group) and any("step" in self.state.get(p, {}) for p in flat.params):
            self._adopt_steps(flat)

    def _gather_grads(self, flat: FlatParams) -> list:
        """Indices of ``flat``'s parameters that have a gradient, after copying into the
        gradient buffer those gradients that are not already their slice of it."""
        members = []
        for i, p in enumerate(flat.params):
            if p.grad is None:
                continue
            grad = p.grad.data if isinstance(p.grad, Tensor) else p.grad
            if grad is not flat.grad_views[i]:
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
                flat.grad_views[i][...] = grad
            members.append(i)
        return members

    def _clip_scale(self, work):
        """The clipping coefficient for ``max_grad_norm`` over the gradients of ``work``
        (one reduction per device): a one-element array on the device, or a float when
        the gradients span several devices (their norms are then combined on the host)."""
        per_device: dict = {}
        for _, flat, members in work:
            grads, segments = per_device.setdefault(flat.device, ([], []))
            grads.append(flat.grad)
            segments.append(None if len(members) == len(flat.params) else flat.segments(members))
        if len(per_device) > 1 and cuda_graph.capturing():
            raise RuntimeError(
                f"{type(self).__name__}.step() cannot be captured in a CUDA graph with max_grad_norm over "
                f"gradients on several devices ({sorted(per_device)}): their norms are combined on the host"
            )
        results = [kernels.optim.for_device(device).clip_coefficient(grads, self.max_grad_norm, segments=segments)
                   for device, (grads, segments) in per_device.items()]
        if len(results) == 1:
            self.last_grad_norm = results[0][0]
            return results[0][1:]
        norm = math.sqrt(sum(float(r[0]) ** 2 for r in results))
        coef = self.max_grad_norm / (norm + 1e-6)
        self.last_grad_norm = norm
        return 1.0 if coef > 1 else coef  # NaN stays NaN, as torch.clamp(max=1)

    def _check_capture_state(self, group: dict, flat: FlatParams, members: list) -> None:
        """While capturing: refuse to create state, or to copy state arrays (loaded,
        assigned) into the buffers: a replay would create or copy them again."""
        wanted = list(self._state_specs(group))
        device_steps = self._device_steps(group)
        missing: dict = {}
        foreign = set()
        for i in members:
            state = self.state.get(flat.params[i], {})
            for name in wanted + (["step"] if device_steps else []):
                value = state.get(name)
                if value is None:
                    missing[name] = missing.get(name, 0) + 1
                elif name == "step":
                    if not flat.step_views or value is not flat.step_views[i]:
                        foreign.add(name)
                elif name not in flat.state_views or value is not flat.state_views[name][i]:
                    foreign.add(name)
        if missing:
            what = ", ".join(_STATE_WORDS.get(name, name) for name in missing)
            raise RuntimeError(
                f"{type(self).__name__}.step() cannot be captured in a CUDA graph on the first step of "
                f"{max(missing.values())} parameter(s): {what} not yet created (a replay would create them "
                "again); run at least one eager step before capture"
            )
        if foreign:
            raise RuntimeError(
                f"{type(self).__name__}.step() cannot be captured in a CUDA graph now: state "
                f"{sorted(foreign)} was assigned outside the optimizer's buffers and would be copied in "
                "(a replay would copy it again); run at least one eager step before capture"
            )

    def _step_flat(self, group: dict, flat: FlatParams, members: list, grad_scale) -> None:
        specs = self._state_specs(group)
        device_steps = self._device_steps(group)
        fresh = {name: flat.ensure_state(name, init) for name, init in specs.items()}
        flat.adopt(self.state, list(specs))
        if device_steps:
            self._adopt_steps(flat)
        launches: dict = {}
        for i in members:
            p = flat.params[i]
            key = self._prepare(p, self.state[p], group, flat, i, fresh)
            launches.setdefault(key, []).append(i)
        family = kernels.optim.for_device(flat.device)
        whole = len(members) == len(flat.params) and len(launches) == 1
        for key, indices in launches.items():
            self._launch(family, flat, group, key, None if whole else flat.segments(indices), grad_scale,
                         indices)
            if device_steps:  # stepped together: still equal counts, whatever the replays
                token = next(self._tokens)
                for i in indices:
                    self._cohorts[id(flat.params[i])] = token
        flat.version.value += 1  # the parameters changed in place (one bump per buffer and step)

    # -- updates ---------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of every parameter.

        Args:
            set_to_none: set ``param.grad`` to ``None`` (the default, as in PyTorch)
                instead of filling it with zeros.
        """
        for index, group in enumerate(self.param_groups):
            zeroed = set()
            if not set_to_none and index < len(self._flat) and self._flat[index] is not None:
                for flat in self._flat[index][1]:
                    if flat.valid() and all(p.grad is None or p.grad.data is view
                                            for p, view in zip(flat.params, flat.grad_views)):
                        flat.grad.fill(0)  # one fill for the whole buffer, not one per tensor
                        zeroed.update(id(p) for p in flat.params)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None  # the next backward writes the flat slice again
                else:
                    p.grad = p.grad.detach()
                    if id(p) not in zeroed:
                        p.grad.zero_()

    def step(self, closure=None):
        """Perform one optimization step on every parameter that has a gradient.

        Runs without recording autograd. Parameters whose ``grad`` is ``None`` are
        skipped (their state is not created or advanced). One update call per flat
        buffer (see the module docstring), after one norm reduction with
        ``max_grad_norm``.

        While a CUDA graph is being recorded (``cuda_graph.capturing()``) it raises
        ``RuntimeError`` rather than record a step that replays wrongly: an optimizer
        whose update depends on the step count but is not ``capturable``, or a step
        that would create state (run at least one eager step before capture).

        Args:
            closure: optional callable that re-evaluates the model and returns the
                loss; it runs with gradients enabled and its result is returned.
        """
        if cuda_graph.capturing():  # before anything runs, as torch's capture health check
            for group in self.param_groups:
                if not group.get("capturable", False) and self._step_dependent(group):
                    raise RuntimeError(
                        f"{type(self).__name__}(capturable=False) cannot be captured in a CUDA graph: "
                        f"{self._capture_reason}; construct it with capturable=True"
                    )
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        self._calls += 1
        with no_grad():
            work = []
            for index, group in enumerate(self.param_groups):
                for flat in self._group_flats(index):
                    members = self._gather_grads(flat)
                    if members:
                        work.append((group, flat, members))
            if cuda_graph.capturing():  # every refusal before the first launch
                for group, flat, members in work:
                    self._check_capture_state(group, flat, members)
            grad_scale = self._clip_scale(work) if self.max_grad_norm is not None and work else None
            for group, flat, members in work:
                self._step_flat(group, flat, members, grad_scale)
        return loss

    def flat_buffers(self) -> list:
        """The ``FlatParams`` of every param group (rebuilt first where needed): the
        contiguous parameter, gradient and state buffers the updates run on."""
        return [flat for index in range(len(self.param_groups)) for flat in self._group_flats(index)]

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The optimizer's state as a picklable dict, in PyTorch's layout.

        ``{"state": {index: {name: value}}, "param_groups": [{..., "params": [index]}]}``:
        parameters are numbered in the order of the groups; arrays are host NumPy
        copies, step counts plain ints (also the device counts of a capturable
        optimizer, read back here), so a checkpoint loads whatever the ``capturable``
        of the optimizer that loads it.
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
                state[index[id(p)]] = {k: _step_number(v) if k == "step" else _to_host(v)
                                       for k, v in values.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state saved by ``state_dict()``.

        The parameter groups must have the same number of parameters as when saved, and
        every state array the shape of its parameter; arrays are copied to the device
        (and floating ones cast to the dtype) of their parameter. Hyper-parameters are
        restored from the saved groups, except ``capturable``, which stays this
        optimizer's (how it runs, not training state; PyTorch would take the saved
        flag): step counts, saved as numbers or arrays, become host ints or device
        counts accordingly, so checkpoints load both ways.

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
            state[p] = {name: _step_number(v) if name == "step" else _to_param(p, key, name, v)
                        for name, v in values.items()}
        new_groups = []
        for group, saved in zip(self.param_groups, saved_groups):
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
            if "capturable" in group:
                saved["capturable"] = group["capturable"]
            self._validate(saved)
            new_groups.append(saved)
        self.state = state
        self.param_groups = new_groups
        for index, group in enumerate(self.param_groups):
            for flat in self._group_flats(index):  # the loaded arrays become views again
                self._load_flat_state(flat, group)

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


def _step_number(value):
    """A step count as a host number (an int when whole): from an int, a float, a 0-d /
    one-element array (NumPy, CuPy: read back) or a Tensor."""
    if isinstance(value, Tensor):
        value = value.data
    if hasattr(value, "shape"):
        value = value.item() if hasattr(value, "item") else np.asarray(value).item()
    value = float(value) if not isinstance(value, numbers.Integral) else int(value)
    return int(value) if float(value).is_integer() else value


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
