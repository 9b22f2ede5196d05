"""What every Triton launcher shares: argument checks, kernel arguments (bf16 as uint16),
float32 <-> storage conversions, int64 decisions (and ``widen4``, the kernels' stride
widening), the flat elementwise kernels' configs, layout and launch (``FLAT_CONFIGS``,
``flat_kernel``, ``flat_inputs``, ``launch_flat``: activation, cast, dropout, loss),
``Tuned`` (a kernel with its GPU configs, autotuned on a GPU, one fixed config under the
interpreter, any one config forced by the tests), and the split-K policy and partial
sums of the grad-weight GEMMs (``split_k``, ``sum_partials``: conv, linear).

Config tuples: the kernel's block sizes in the order of ``Tuned.blocks``, then
``num_warps`` and ``num_stages``, e.g. ``(128, 64, 32, 8, 3)`` for (BLOCK_M, BLOCK_N,
BLOCK_K, warps, stages).
"""

from __future__ import annotations

import os

import numpy as np
import triton
import triton.language as tl

from .. import backend, knobs
from . import autotune
from ..backend import get_array_module, kernel_arg
from ..dtypes import dtype_name, from_float32, to_float32  # noqa: F401 - the launchers' bf16 conversions

#: Element types the Triton launchers take. bfloat16 exists in neither NumPy nor CuPy, so
#: bf16 arrays travel as uint16 bit patterns (what torch's ``.view(torch.int16)`` or
#: ml_dtypes hold); the kernels see bf16.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.uint16))


def arg(a):
    """``a`` as a kernel argument: uint16 arrays are bf16 to the kernel."""
    return kernel_arg(a, "bfloat16" if a.dtype == np.uint16 else None)


def kernel_view(a):
    """``a`` as memory a kernel may read with ``strides(a)``: NumPy arrays that are
    read-only (``broadcast_to`` views) or have negative strides, which ``kernel_arg``
    refuses, and arrays whose strides are negative or not whole elements, are copied to
    C order here, BEFORE the launcher reads their strides. None stays None."""
    if a is None:
        return None
    if isinstance(a, np.ndarray) and (not a.flags.writeable or any(s < 0 for s in a.strides)):
        return np.array(a, order="C")  # always a fresh, writeable copy (ascontiguousarray
        # returns a read-only C-contiguous array, e.g. broadcast_to(g, g.shape), as is)
    if any(s < 0 or s % a.itemsize for s in a.strides):  # CuPy: negative or odd strides
        return get_array_module(a).ascontiguousarray(a)
    return a


if backend.interpreting() and os.environ.get("GPUKERNELS_RECORD_LAUNCHES"):
    autotune.record_launches(os.environ["GPUKERNELS_RECORD_LAUNCHES"])  # the GPU session's dry run


def check_float(op: str, *arrays) -> None:
    """float32 / float16 / bf16-as-uint16 only, all the same, all on one device."""
    dtypes = {a.dtype for a in arrays if a is not None}
    for a in arrays:
        if a is not None and a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op} (Triton): float32, float16 or bfloat16 (as uint16) arrays, got {a.dtype}")
    if len(dtypes) > 1:
        raise TypeError(f"{op}: arrays must share one dtype, got {sorted(map(dtype_name, dtypes))}")
    devices = {backend.device_of(a) for a in arrays if a is not None}
    if len(devices) > 1:
        raise RuntimeError(f"{op}: expected arrays on one device, got {sorted(devices)}")


def check_arrays(op: str, **arrays) -> None:
    """Each keyword an array (a ``TypeError`` naming it otherwise), then ``check_float``
    of them all: one float dtype, one device."""
    for name, a in arrays.items():
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise TypeError(f"{op}: {name} must be a NumPy or CuPy array, got {type(a).__name__}")
    check_float(op, *arrays.values())


def check_same_shape(op: str, **two) -> None:
    """The two keyword arrays have one shape (a ``ValueError`` naming both otherwise)."""
    (name_a, a), (name_b, b) = two.items()
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{op}: {name_a} shape {tuple(a.shape)} differs from {name_b} shape {tuple(b.shape)}")


def precision(dtype) -> str:
    """``tl.dot``'s input precision: TF32 tensor cores for float32 unless
    ``backend.set_allow_tf32(False)``; fp16/bf16 always run on tensor cores."""
    return "tf32" if np.dtype(dtype) == np.float32 and backend.get_allow_tf32() else "ieee"


@triton.jit
def grouped_tile(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Tile (pid_m, pid_n) of program ``pid`` in grouped order: GROUP_M row tiles in a row
    share each column tile (e.g. weights) while it is still in L2."""
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % width) % size_m, (pid % width) // size_m


def strides(a) -> tuple:
    """Strides in elements (Triton's convention), not bytes (NumPy's)."""
    return tuple(s // a.itemsize for s in a.strides)


def span(a) -> int:
    """Elements from the lowest to the highest address ``a`` reaches, + 1: what a
    kernel's element offsets into it must hold. A strided view spans far more than its
    size (``zeros((3, 2**30))[:, :16]``: 48 elements, a span past 2**31)."""
    if a.size == 0:
        return 0
    return 1 + sum((n - 1) * abs(s) for n, s in zip(a.shape, strides(a)))


def needs_int64(*arrays) -> bool:
    """Compile with int64 offsets when any operand holds 2**31 elements or spans that
    much memory (by shape and strides): element offsets are int32 otherwise, and Triton
    scales them to bytes in 64 bits, so the element offset is what must fit. Launchers
    pass every array operand, inputs and outputs alike."""
    return any(a is not None and (a.size >= 2**31 or span(a) >= 2**31) for a in arrays)


@triton.jit
def widen4(a, b, c, d):
    """Four int32 strides (or indices) as int64, for kernels compiled with INT64.

    ``tl.cast``, not ``.to()``: Triton specialises an int argument equal to 1 (a unit
    stride) to a constexpr, which has no ``.to``; ``tl.cast`` turns it into a tensor too."""
    return tl.cast(a, tl.int64), tl.cast(b, tl.int64), tl.cast(c, tl.int64), tl.cast(d, tl.int64)


# ----------------------------------------------------------------------------- flat kernels
# Elementwise kernels (activation, cast, dropout, loss) run flat over dense buffers in
# BLOCK pieces: program p owns [p BLOCK, (p + 1) BLOCK); a full piece is accessed unmasked
# (so it vectorises), only the last, partial piece is masked with its indices clamped.

# (BLOCK, num_warps, num_stages) of every autotuned flat kernel (heaviside's strided one
# has its own): 8 or 16 elements per thread, so every thread has 2 to 4 independent
# 16-byte loads (fp32) per stream in flight, with few enough registers for 50-100%
# occupancy (32 per thread needed ~128 registers and spilled in leaky's backward). No
# loop, so num_stages is 1. Every BLOCK is a multiple of 1024 (the loss kernel's
# partial-sum grid). Each spill-free on sm_80 and sm_90 (aot_specs).
FLAT_CONFIGS = [(1024, 4, 1), (2048, 4, 1), (2048, 8, 1), (4096, 8, 1)]
# Under the interpreter: 1024, so the tests' 1023 / 1025 / 2048 elements exercise the
# masked tail alone, a full block plus a tail, and full blocks alone.
FLAT_INTERPRET_CONFIG = (1024, 4, 1)

#: Flat kernels compute ``start + BLOCK`` and ``start + arange(BLOCK)``: past this many
#: elements those overflow int32 before the tensor reaches 2**31 elements, so the
#: launchers switch to INT64 here already (needs_int64 alone waits for 2**31).
INT32_SAFE = 2**31 - 2**16


def flat_grid(n):
    """Launch grid of a flat kernel over ``n`` elements in BLOCK pieces."""
    return lambda meta: (triton.cdiv(n, meta["BLOCK"]),)


@triton.jit
def flat_block(INT64: tl.constexpr, BLOCK: tl.constexpr):
    """``(start, offs)`` of this program's piece of a flat kernel: ``start = pid BLOCK``
    and its BLOCK offsets (int64 with INT64: launchers set it from ``INT32_SAFE``).
    The piece is full, so unmasked, when ``start + BLOCK <= n``."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    start = pid * BLOCK
    return start, start + tl.arange(0, BLOCK)


def _dense_order(a):
    """The axes of ``a`` outermost first, if its memory is that permutation of a
    C-contiguous array (no gaps, no stride-0 broadcast, no negative stride); else None."""
    dims = sorted(((s, i) for i, (s, size) in enumerate(zip(strides(a), a.shape)) if size != 1),
                  reverse=True)
    expect = 1
    for s, i in reversed(dims):
        if s != expect:
            return None
        expect *= a.shape[i]
    return tuple(i for _, i in dims) + tuple(i for i, size in enumerate(a.shape) if size == 1)


def flat_operands(xp, *arrays):
    """The arrays (same shape) laid out so that a flat kernel can walk their buffers in
    step, and the axis order of that layout (outermost first).

    Arrays that are all dense in one axis order stay as they are (C order, channels-last,
    ...); otherwise every one that is not C-contiguous is copied to C order."""
    orders = [_dense_order(a) for a in arrays]
    ref = arrays[0]
    if orders[0] is not None and all(
        o is not None and all(sa == sr for sa, sr, size in zip(strides(a), strides(ref), ref.shape) if size != 1)
        for o, a in zip(orders, arrays)
    ):
        return arrays, orders[0]
    return tuple(xp.ascontiguousarray(a) for a in arrays), tuple(range(ref.ndim))


def empty_in_order(xp, shape, dtype, order):
    """An empty array of ``shape`` whose memory runs over the axes in ``order`` (the
    order ``flat_operands`` returned), so a flat kernel's output keeps its inputs' layout."""
    buf = xp.empty(tuple(shape[i] for i in order), dtype=dtype)
    return buf.transpose(tuple(int(i) for i in np.argsort(order))) if len(order) > 1 else buf


def flat_kernel(kernel, configs=FLAT_CONFIGS):
    """``kernel`` (a flat kernel: pointers, then ``n``, ..., ``INT64``, ``BLOCK``) as a
    ``Tuned`` over ``configs``, autotuned per element count ``n``."""
    return Tuned(kernel, ("BLOCK",), configs, ["n"], FLAT_INTERPRET_CONFIG)


def flat_inputs(op, **arrays):
    """The checks and layout of a flat kernel's inputs: ``check_arrays`` (and, for two,
    ``check_same_shape``), then ``flat_operands``. Returns ``(xp, arrays, empty)``:
    the arrays laid out for the kernel, and ``empty(dtype=None)``, a new array of their
    shape in their layout (their dtype by default), for each output."""
    check_arrays(op, **arrays)
    if len(arrays) == 2:
        check_same_shape(op, **arrays)
    xp = get_array_module(*arrays.values())
    laid, order = flat_operands(xp, *arrays.values())
    ref = laid[0]

    def empty(dtype=None):
        return empty_in_order(xp, ref.shape, ref.dtype if dtype is None else dtype, order)

    return xp, laid, empty


def launch_flat(kernel, arrays, n, *scalars, bits=False, **consts):
    """``kernel(*arrays, n, *scalars, INT64=..., **consts)`` over ``n`` elements in BLOCK
    pieces (nothing for ``n = 0``). ``kernel``: a ``Tuned`` (BLOCK from its config) or a
    jit function (BLOCK and warps in ``consts``). INT64 when an operand needs it or ``n``
    reaches ``INT32_SAFE``. bf16 arrays go in as bf16 (``arg``), or as their uint16 bits
    with ``bits`` (a kernel that converts them itself)."""
    if n:
        to_arg = kernel_arg if bits else arg
        kernel[flat_grid(n)](*(to_arg(a) for a in arrays), n, *scalars,
                             INT64=n >= INT32_SAFE or needs_int64(*arrays), **consts)


def storage_round(dtype, value) -> float:
    """``value`` rounded to the storage dtype (bf16 for uint16), as a Python float: the
    constants the reference computes in its dtype (``x.dtype.type(slope)``)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint16:
        bits = from_float32(np, np.asarray(value, dtype=np.float32).reshape(1), dtype)
        return float(to_float32(np, bits)[0])
    return float(dtype.type(value))


class Tuned:
    """A ``@triton.jit`` kernel with its tile configs.

    Args:
        kernel: the jit function; its block-size parameters are named in ``blocks``.
        blocks: names of the constexpr block sizes, in config order.
        configs: GPU configs ``(*block sizes, num_warps, num_stages)``, the family's best
            guess first; on a GPU one is chosen per value of ``key`` (argument names) by
            ``autotune.choose`` (``GPUKERNELS_AUTOTUNE={full,fast,off}``, on-disk cache).
        interpret: the one config used under Triton's interpreter, whose programs run
            one after another in Python: big tiles, few programs.
        prune: optional ``prune(configs, named_args, **kwargs)`` over ``triton.Config``
            objects (``triton.autotune``'s ``early_config_prune``): keeps only the configs
            worth timing for a launch.

    ``knobs.override(configs={tuned: cfg})`` replaces autotuning with ``cfg``: the
    ``gpu`` tests run every config this way, so a config that miscompiles cannot hide
    behind the autotuner's choice.
    """

    def __init__(self, kernel, blocks, configs, key, interpret, prune=None):
        self.kernel, self.blocks, self.configs = kernel, tuple(blocks), [tuple(c) for c in configs]
        self.key, self.interpret, self.prune = list(key), tuple(interpret), prune
        fn = getattr(kernel, "fn", kernel)  # the Python function under the jit wrapper
        self.kernel_name, self.name = fn.__name__, f"{fn.__module__}.{fn.__name__}"
        self.arg_index = {name: i for i, name in enumerate(kernel.arg_names)}
        self.chosen = {}  # autotune.choose's in-memory cache
        autotune.register(self)

    def meta(self, cfg) -> dict:
        *sizes, warps, stages = cfg
        return {**dict(zip(self.blocks, sizes)), "num_warps": warps, "num_stages": stages}

    def pruned(self, named_args, consts) -> list:
        """The configs ``prune`` keeps for this launch (all of them when it keeps none)."""
        configs = [triton.Config(dict(zip(self.blocks, c[:-2])), num_warps=c[-2], num_stages=c[-1])
                   for c in self.configs]
        kept = self.prune(configs, named_args, **consts)
        return [tuple(c.kwargs[b] for b in self.blocks) + (c.num_warps, c.num_stages) for c in kept] or self.configs

    def fixed_config(self):
        """The config a launch uses without autotuning (interpreter or forced), else None."""
        forced = knobs.get("configs").get(self)
        if forced is not None:
            return forced
        return self.interpret if backend.interpreting() else None

    def __getitem__(self, grid):
        def launch(*args, **consts):
            cfg = self.fixed_config()
            if cfg is None:
                cfg = autotune.choose(self, grid, args, consts)
            return self.kernel[grid](*args, **consts, **self.meta(cfg))

        return launch

# ----------------------------------------------------------------------------- split-K
# A grad-weight GEMM (conv, linear) reduces over the batch (K = N*OH*OW pixels, or batch
# rows) into a small output, whose tiles alone may not fill the GPU: then K is split over
# several programs, each writing a float32 partial, added by ``sum_partials`` in a fixed
# order (deterministic: no atomics).

#: Split-K aims for this many programs: 2 waves of an H100's 132 SMs.
SPLIT_K_PROGRAMS = 264
#: At most this many splits.
SPLIT_K_MAX = 64


def split_k(tuned, rows, cols, k, tile, min_k):
    """``(splits, k_per_split)`` of a grad-weight launch of ``tuned`` whose (rows, cols)
    output is counted in ``tile x tile`` tiles and whose reduction has ``k`` steps, each
    split keeping at least ``min_k`` of them; under the interpreter the ``split_k`` knob
    (one split by default: tests exercise split-K there). ``k_per_split`` is a whole
    number of BLOCK_K steps of the config the launch will use (the largest BLOCK_K of the
    configs when the autotuner chooses: every other one divides it)."""
    if backend.interpreting():
        splits = knobs.get("split_k") or 1
    else:
        tiles = triton.cdiv(rows, tile) * triton.cdiv(cols, tile)
        splits = max(1, min(SPLIT_K_PROGRAMS // max(tiles, 1), k // min_k, SPLIT_K_MAX))
    cfg = tuned.fixed_config()
    block_k = tuned.blocks.index("BLOCK_K")
    bk = cfg[block_k] if cfg is not None else max(c[block_k] for c in tuned.configs)
    per_split = triton.cdiv(triton.cdiv(k, splits), bk) * bk  # whole BLOCK_K steps per split
    return triton.cdiv(k, per_split), per_split


# _sum_partials_kernel: elements per program, warps (a bandwidth-bound pass, not tuned)
SUM_BLOCK, SUM_WARPS = 1024, 4


@triton.jit
def _sum_partials_kernel(part_ptr, out_ptr, S, O, KC, C, KW, so, sc, sh, sw, BLOCK: tl.constexpr):
    """out[o, c, kh, kw] = sum_s part[s, o, (kh, kw, c)]: split-K partials of a weight
    gradient (float32, (S, O, KC) contiguous, KC = KH*KW*C) summed in float32 and stored
    once, in the output's layout (any strides) and dtype. A linear layer's (O, IN) is
    C = KC, KW = 1; a bias's (O,) is KC = C = KW = 1. Memory traffic: read S * O * KC * 4
    bytes, write O * KC * itemsize; replaces a reduction, a (transposing) copy and a cast."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    total = O * KC
    mask = offs < total
    acc = tl.zeros((BLOCK,), tl.float32)
    for s in range(S):
        acc += tl.load(part_ptr + s * total + offs, mask=mask, other=0.0)
    o = offs // KC
    k = offs % KC
    c = k % C
    tap = k // C
    dst = o * so + c * sc + (tap // KW) * sh + (tap % KW) * sw
    tl.store(out_ptr + dst, acc.to(out_ptr.dtype.element_ty), mask=mask)


def sum_partials(part, out, c=None, kw=1):
    """``out`` = the sum over the first axis of ``part`` (S, O, KC) float32, in one launch:
    a weight gradient (O, C, KH, KW) whose K index is (kh, kw, c) (conv: ``c``, ``kw``),
    an (O, KC) one (linear: the defaults) or a bias (O,) from (S, O, 1). ``out`` keeps its
    strides and dtype (bf16 as uint16)."""
    s, o, kc = part.shape
    if s * o * kc >= 2**31:
        raise ValueError(f"sum_partials: {s} partials of {o}x{kc} exceed int32 offsets")
    st = strides(out) + (0,) * (4 - out.ndim)
    _sum_partials_kernel[(triton.cdiv(o * kc, SUM_BLOCK),)](
        kernel_arg(part), arg(out), s, o, kc, kc if c is None else c, kw, *st, BLOCK=SUM_BLOCK,
        num_warps=SUM_WARPS)
