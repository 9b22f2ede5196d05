"""What ``python -m gpukernels.triton.aot`` compiles: every kernel of every op family, in
each tile config its family lists, and the variants that change the generated code, as
data read from the families' own configs (``GPU_CONFIGS``, ``IEEE``, ``UNALIGNED``, ...).
The kernel files hold kernels and launchers only; ``SPECS[family]()`` lists a family's
``KernelSpec`` rows.

Conventions of the variants, the same in every family: the first config of a kernel is
also compiled in each dtype and code variant (fp16, bf16, INT64 offsets, the family's
modes), every other config in the base variant (float32); a pointer is declared 16-byte
aligned and an int argument equal to 1 (a unit stride, a size of one) a constant where a
launch on fresh arrays has Triton specialise it so, because that is the code a GPU runs.
A spec's name (``family.kind[config variant]``) is what ``--compare`` matches rows by:
a new or renamed spec is reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import triton.language as tl

from . import (_common, activation, batchnorm, batchnorm_kernels, cast, conv, cross_entropy, dropout, linear, loss,
               optim, optim_kernels, pool)


@dataclass
class KernelSpec:
    """One compilation: a jit function, its argument types and constexpr values."""

    name: str  # e.g. "conv.fwd[128x64x32 w4 s4 fp32 tf32]"
    module: str  # module holding the kernel, e.g. "gpukernels.triton.conv"
    kernel: str  # attribute name of the @triton.jit function
    signature: dict  # arg name -> "*fp32" | "i32" | "fp32" | "constexpr"
    constexprs: dict
    num_warps: int
    num_stages: int
    tensor_cores: bool = True  # must the PTX contain mma/wgmma?
    # Arguments a launch sees as multiples of 16 (aligned pointers, sizes): Triton
    # specialises on that at run time, so the vectorised code a GPU runs is compiled.
    aligned: tuple = ()
    extra: dict = field(default_factory=dict)


def signature_for(fn, constexprs, pointers, dtype="fp32", floats=("slope",), i64=()):
    """A Triton signature: pointers get ``*dtype`` (a dict entry overrides), ``floats``
    fp32, ``i64`` int64, constexprs "constexpr", every other argument i32."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = "*" + (pointers[name] if isinstance(pointers, dict) else dtype)
        elif name in floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i64" if name in i64 else "i32"
    return sig


def _typed(pointers, dtype):
    """``{pointer: type}``: a pointer mapped to None takes the variant's data ``dtype``."""
    return {p: t or dtype for p, t in pointers.items()}


# ----------------------------------------------------------------------------- flat kernels

#: The dtype and INT64 variants of a flat kernel's first config.
_FLAT_FIRST = [("fp16", {}), ("bf16", {}), ("fp32 int64", {"INT64": True})]


def _flat(name, module, kernel, configs, const, pointers, floats=(), runs=(("fp32", {}),), first=_FLAT_FIRST):
    """A flat kernel's specs: ``runs`` on every config and ``first`` on the first one too,
    each ``(label, constexpr overrides)`` whose label starts with the data dtype;
    ``name`` is the name's prefix (``family.kind[`` and any fixed words)."""
    fn = getattr(module, kernel)
    specs = []
    for i, (block, warps, stages) in enumerate(configs):
        for label, over in list(runs) + (list(first) if i == 0 else []):
            c = {**const, "BLOCK": block, **over}
            specs.append(KernelSpec(
                name=f"{name}{block} w{warps} {label}]", module=module.__name__, kernel=kernel,
                signature=signature_for(fn, c, _typed(pointers, label.split()[0]), floats=floats,
                                        i64=("n",) if over.get("INT64") else ()),
                constexprs=c, num_warps=warps, num_stages=stages, tensor_cores=False))
    return specs


def activation_specs():
    """Every activation x every config of the forward and backward kernels (fp32), and on
    the first config the fp16 / bf16 / INT64 variants; add_relu's kernel likewise (with
    and without the ReLU); heaviside's strided kernel per config."""
    m, specs = activation, []
    kinds = [("fwd", "_act_fwd_kernel", ("x_ptr", "y_ptr"), ("slope", "value"), range(5)),
             ("bwd", "_act_bwd_kernel", ("g_ptr", "y_ptr", "dx_ptr"), ("slope",), range(4))]
    for kind, kernel, pointers, floats, acts in kinds:
        for act in acts:
            act_name = [k for k, v in m._ACT.items() if v == act][0]
            specs += _flat(f"activation.{kind}[{act_name} ", m, kernel, m.GPU_CONFIGS, {"ACT": act, "INT64": False},
                           dict.fromkeys(pointers), floats)
    no_relu = {"RELU": False}
    specs += _flat("activation.add_relu[", m, "_add_relu_kernel", m.GPU_CONFIGS, {"RELU": True, "INT64": False},
                   dict.fromkeys(("a_ptr", "b_ptr", "y_ptr")), runs=[("fp32", {}), ("fp32 no-relu", no_relu)],
                   first=[("fp16", {}), ("bf16", {}), ("bf16 no-relu", no_relu), ("fp32 int64", {"INT64": True})])
    specs += _flat("activation.heaviside[", m, "_heaviside_kernel", m.HEAVISIDE_CONFIGS, {"INT64": False},
                   dict.fromkeys(("x_ptr", "v_ptr", "y_ptr")), first=[("bf16", {}), ("fp32 int64", {"INT64": True})])
    return specs


def dropout_specs():
    """Both kernels x every config (fp32, forward with x), and on the first config the
    fp16 / bf16 / mask-only / INT64 variants."""
    m = dropout
    return (_flat("dropout.fwd[", m, "_dropout_fwd_kernel", m.GPU_CONFIGS, {"HAS_X": True, "INT64": False},
                  {"x_ptr": None, "bits_ptr": "u8", "y_ptr": None, "mask_ptr": None}, floats=("scale",),
                  first=_FLAT_FIRST[:2] + [("fp32 mask-only", {"HAS_X": False})] + _FLAT_FIRST[2:])
            + _flat("dropout.bwd[", m, "_dropout_bwd_kernel", m.GPU_CONFIGS, {"INT64": False},
                    dict.fromkeys(("g_ptr", "m_ptr", "dx_ptr"))))


def loss_specs():
    """Forward ('mean' and 'none') and backward (scalar and elementwise g) x every config
    (fp32), and on the first config the fp16 / bf16 / INT64 variants; the reduction kernel."""
    m, specs = loss, []
    for reduce in (True, False):
        specs += _flat(f"loss.mse_fwd[{'reduce' if reduce else 'none'} ", m, "_mse_fwd_kernel", m.GPU_CONFIGS,
                       {"REDUCE": reduce, "INT64": False, "PART": m.PART},
                       {"a_ptr": None, "t_ptr": None, "diff_ptr": None, "sq_ptr": None, "part_ptr": "fp32"})
    for g_scalar in (True, False):
        specs += _flat(f"loss.mse_bwd[{'scalar g' if g_scalar else 'none'} ", m, "_mse_bwd_kernel", m.GPU_CONFIGS,
                       {"G_SCALAR": g_scalar, "INT64": False}, dict.fromkeys(("g_ptr", "diff_ptr", "dx_ptr")),
                       floats=("scale",))
    for dtype in ("fp32", "bf16"):
        const = {"BLOCK": m.SUM_BLOCK}
        specs.append(KernelSpec(
            name=f"loss.mse_sum[{m.SUM_BLOCK} w{m.SUM_WARPS} {dtype}]", module=m.__name__, kernel="_mse_sum_kernel",
            signature=signature_for(m._mse_sum_kernel, const, {"part_ptr": "fp32", "out_ptr": dtype},
                                    floats=("divisor",)),
            constexprs=const, num_warps=m.SUM_WARPS, num_stages=1, tensor_cores=False))
    return specs


def cast_specs():
    """The kernel for every (source, target) pair of float32 / float16 / bf16, and one
    int64-offset variant."""
    m, specs = cast, []
    pairs = [(a, b) for a in ("fp32", "fp16", "bf16") for b in ("fp32", "fp16", "bf16") if a != b]
    bits = {"fp32": "fp32", "fp16": "fp16", "bf16": "u16"}  # bf16 as raw uint16
    for (src, dst), int64 in [(p, False) for p in pairs] + [(("fp32", "bf16"), True)]:
        const = {"SRC_BF16": src == "bf16", "DST_BF16": dst == "bf16", "INT64": int64, "BLOCK": m.BLOCK}
        specs.append(KernelSpec(
            name=f"cast[{src}->{dst}{' int64' if int64 else ''}]", module=m.__name__, kernel="_cast_kernel",
            signature=signature_for(m._cast_kernel, const, {"x_ptr": bits[src], "y_ptr": bits[dst]}, floats=(),
                                    i64=("n",) if int64 else ()),
            constexprs=const, num_warps=m.WARPS, num_stages=1, tensor_cores=False))
    return specs


# ----------------------------------------------------------------------------- GEMMs


def sum_partials_specs():
    """``_common._sum_partials_kernel`` (split-K's reduction) for float32 / float16 / bf16 outputs."""
    const = {"BLOCK": _common.SUM_BLOCK}
    return [KernelSpec(name=f"common.sum_partials[{dtype}]", module=_common.__name__, kernel="_sum_partials_kernel",
                       signature=signature_for(_common._sum_partials_kernel, const,
                                               {"part_ptr": "fp32", "out_ptr": dtype}, floats=()),
                       constexprs=const, num_warps=_common.SUM_WARPS, num_stages=1, tensor_cores=False)
            for dtype in ("fp32", "fp16", "bf16")]


def conv_specs():
    """Every kernel x config (float32/TF32, 3x3, stride 1, ReLU), every IEEE config in full
    float32, plus, on the first config of each kernel, the variants that change the
    generated code: fp16, bf16, PACKED small-C, 1x1, stride/dilation 2, leaky ReLU, INT64
    offsets (also with the unit innermost strides Triton turns into constants at launch);
    and split-K's reduction."""
    m = conv
    unit_strides = {"fwd": ("sxw", "syw"), "dgrad": ("sgw", "sdw"), "wgrad": ("sgw", "sxw")}
    kernels = {
        "fwd": ("_conv2d_fwd_kernel", ("x_ptr", "w_ptr", "b_ptr", "y_ptr"),
                dict(HAS_BIAS=True, PACKED=False)),
        "dgrad": ("_conv2d_dgrad_kernel", ("g_ptr", "y_ptr", "w_ptr", "dx_ptr"),
                  dict(TAP_STEP_H=1, TAP_STEP_W=1)),
        "wgrad": ("_conv2d_wgrad_kernel", ("g_ptr", "y_ptr", "x_ptr", "dw_ptr", "db_ptr"),
                  dict(NEED_BIAS=True, PACKED=False)),
    }
    variants = [  # (label, dtype, constexpr overrides, tensor cores expected)
        ("fp16", "fp16", {}, True),
        ("bf16", "bf16", {}, True),
        ("1x1 s2", "fp32", {"KH": 1, "KW": 1, "STRIDE_H": 2, "STRIDE_W": 2}, True),
        ("5x5 d2 leaky", "fp32", {"KH": 5, "KW": 5, "DIL_H": 2, "DIL_W": 2, "ACTIVATION": 2}, True),
        ("int64", "fp32", {"INT64": True}, True),
        # a stride of 1 is specialised to a constexpr at launch: the int64 widening must take it
        ("int64 unit-stride", "fp32", {"INT64": True, "UNIT": 1}, True),
        ("packed", "fp32", {"PACKED": True}, True),
    ]
    specs = []
    for kind, (name, pointers, own) in kernels.items():
        fn = getattr(m, name)
        for i, (bm, bn, bk, warps, stages) in enumerate(m.GPU_CONFIGS[kind]):
            runs = [("fp32 tf32", "fp32", {}, True)] + (variants if i == 0 else [])
            if (bm, bn, bk, warps, stages) in m.IEEE[kind]:  # the configs full float32 may use
                runs.append(("fp32 ieee", "fp32", {"PRECISION": "ieee"}, False))
            for label, dtype, over, tensor_cores in runs:
                if label == "packed" and "PACKED" not in own:
                    continue
                const = dict(KH=3, KW=3, STRIDE_H=1, STRIDE_W=1, DIL_H=1, DIL_W=1, ACTIVATION=1,
                             INT64=False, PRECISION="tf32" if dtype == "fp32" else "ieee",
                             BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=m.GROUP_M, **own)
                const.update(over)
                if const.pop("UNIT", None):  # NCHW's innermost strides, specialised to 1
                    const.update(dict.fromkeys(unit_strides[kind], 1))
                ptrs = {p: dtype for p in pointers}
                if kind == "wgrad":  # float32 partial sums whatever the input dtype
                    ptrs.update(dw_ptr="fp32", db_ptr="fp32")
                if kind == "dgrad" and over.get("STRIDE_H") == 2:
                    const.update(TAP_STEP_H=2, TAP_STEP_W=2)
                specs.append(KernelSpec(
                    name=f"conv.{kind}[{bm}x{bn}x{bk} w{warps} s{stages} {label}]",
                    module=m.__name__, kernel=name,
                    signature=signature_for(fn, const, ptrs), constexprs=const,
                    num_warps=warps, num_stages=stages, tensor_cores=tensor_cores,
                    aligned=pointers,  # allocations are 256-byte aligned
                ))
    return specs + sum_partials_specs()


def linear_specs():
    """Every GEMM (forward, grad-x, grad-W) x every config of its width (float32 with TF32;
    16-bit as bf16) in the two regimes of linear's configs comment: aligned (16-byte
    pointers, sizes and strides multiples of 16, the unit strides of contiguous operands as
    the constants Triton makes of them), and, for the UNALIGNED configs, with no alignment
    at all. Plus the variants that change the code: fp16, no bias / no row sums, any
    strides (no unit stride: loads as unaligned as can be; on the first UNALIGNED config),
    full fp32 (ieee: FMA, no tensor cores) and INT64 offsets (on the last config, aligned
    and not). The tensor-core ones must contain mma / wgmma."""
    m = linear
    # the unit strides of each GEMM's operands when x, W, dy and the outputs are contiguous
    kinds = {
        "fwd": (dict(sak=1, sbk=1, scn=1), dict(HAS_BIAS=True, ROW_SUMS=False)),
        "dgrad": (dict(sak=1, sbn=1, scn=1), dict(HAS_BIAS=False, ROW_SUMS=False)),
        "wgrad": (dict(sam=1, sbn=1, scn=1), dict(HAS_BIAS=False, ROW_SUMS=True)),
    }
    variants = [  # (label, width, on which config, dtype, constexpr overrides)
        ("fp16", "16bit", 0, "fp16", {}),
        ("plain", "fp32", 0, "fp32", {"HAS_BIAS": False, "ROW_SUMS": False}),
        ("strided", "fp32", "safe", "fp32", {"sam": None, "sak": None, "sbk": None, "sbn": None, "scn": None}),
        ("fp32 ieee", "fp32", -1, "fp32", {"PRECISION": "ieee"}),
        ("int64", "fp32", -1, "fp32", {"INT64": True}),
        ("int64", "16bit", -1, "bf16", {"INT64": True}),
    ]
    fn = m._linear_gemm_kernel
    ints = tuple(a for a in fn.arg_names if a in m._SIZES or a in ("split_c", "split_r"))
    specs = []
    for (kind, width), configs in m.GPU_CONFIGS.items():
        unit, own = kinds[kind]
        base_dtype = "fp32" if width == "fp32" else "bf16"
        safe = m.UNALIGNED[(kind, width)]
        for i, cfg in enumerate(configs):
            bm, bn, bk, warps, stages = cfg
            runs = [(base_dtype, base_dtype, {})]
            runs += [(label, dtype, over) for label, w, where, dtype, over in variants
                     if w == width and (cfg == safe[0] if where == "safe" else where % len(configs) == i)]
            for label, dtype, over in runs:
                for aligned in (True, False):
                    if not aligned and (cfg not in safe or label in ("fp16", "plain")):
                        continue
                    const = dict(INT64=False, PRECISION="tf32" if dtype == "fp32" else "ieee",
                                 BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=m.GROUP_M, **unit, **own)
                    const.update(over)
                    const = {k: v for k, v in const.items() if v is not None}
                    specs.append(KernelSpec(
                        name=f"linear.{kind}[{bm}x{bn}x{bk} w{warps} s{stages} {label}"
                             f"{'' if aligned else ' unaligned'}]",
                        module=m.__name__, kernel="_linear_gemm_kernel",
                        signature=signature_for(fn, const, dict.fromkeys(m._POINTERS, dtype)), constexprs=const,
                        num_warps=warps, num_stages=stages,
                        tensor_cores=not (dtype == "fp32" and const["PRECISION"] == "ieee"),
                        aligned=(m._POINTERS + tuple(a for a in ints if a not in const)) if aligned else (),
                    ))
    return specs


# ----------------------------------------------------------------------------- the other families


def pool_specs():
    """Every kernel x config in float32 on the 3x3/s2/p1 window (overlapping: the
    backward's 2x2 window search), plus, on the first config of each kernel, the
    variants that change the generated code: fp16, bf16, 2x2/s2 (non-overlapping, one
    window per pixel), dilation 2, count_include_pad=False, int32 argmax, any input stride
    with unaligned pointers, INT64 offsets. Pointers are 16-byte aligned otherwise, as
    Triton specialises a launch on fresh allocations."""
    m = pool
    kernels = {  # kind: (kernel, pointers (dtype None: the data dtype), own constexprs)
        "max_fwd": ("_max_pool_fwd_kernel", {"x_ptr": None, "y_ptr": None, "idx_ptr": "i8"},
                    dict(DIL_H=1, DIL_W=1)),
        "max_bwd": ("_max_pool_bwd_kernel", {"g_ptr": None, "idx_ptr": "i8", "dx_ptr": None},
                    dict(DIL_H=1, DIL_W=1, NWIN_H=2, NWIN_W=2)),
        "avg_fwd": ("_avg_pool_fwd_kernel", {"x_ptr": None, "y_ptr": None}, dict(COUNT_PAD=True)),
        "avg_bwd": ("_avg_pool_bwd_kernel", {"g_ptr": None, "dx_ptr": None},
                    dict(COUNT_PAD=True, NWIN_H=2, NWIN_W=2)),
    }
    variants = [  # (label, dtype, constexpr overrides, pointer overrides, kinds it applies to)
        ("fp16", "fp16", {}, {}, None),
        ("bf16", "bf16", {}, {}, None),
        ("2x2 s2", "fp32", {"KH": 2, "KW": 2, "NWIN_H": 1, "NWIN_W": 1}, {}, None),
        ("3x3 s1 d2", "fp32", {"STRIDE_H": 1, "STRIDE_W": 1, "DIL_H": 2, "DIL_W": 2, "NWIN_H": 5, "NWIN_W": 5},
         {}, ("max_fwd", "max_bwd")),
        ("no pad count", "fp32", {"COUNT_PAD": False}, {}, ("avg_fwd", "avg_bwd")),
        ("12x12 int32 idx", "fp32", {"KH": 12, "KW": 12, "STRIDE_H": 12, "STRIDE_W": 12, "NWIN_H": 1, "NWIN_W": 1},
         {"idx_ptr": "i32"}, ("max_fwd", "max_bwd")),
        ("strided", "fp32", {"sxw": None, "sgw": None}, {}, None),  # and unaligned
        ("int64", "fp32", {"INT64": True}, {}, None),
    ]
    specs = []
    for kind, (name, pointers, own) in kernels.items():
        fn = getattr(m, name)
        for i, (block, warps, stages) in enumerate(m.GPU_CONFIGS[kind]):
            runs = [("fp32", "fp32", {}, {}, None)] + (variants if i == 0 else [])
            for label, dtype, over, ptr_over, only in runs:
                if only is not None and kind not in only:
                    continue
                # the innermost stride is 1 for contiguous inputs, which Triton specialises
                # to a constexpr at launch: compile that (the "strided" variant: any stride)
                const = dict(KH=3, KW=3, STRIDE_H=2, STRIDE_W=2, INT64=False, BLOCK=block, BLOCK_W=16,
                             sxw=1, sgw=1, **own)
                const.update(over)
                const = {k: v for k, v in const.items() if k in fn.arg_names and v is not None}
                ptrs = _typed(pointers, dtype)
                ptrs.update({p: t for p, t in ptr_over.items() if p in ptrs})
                specs.append(KernelSpec(
                    name=f"pool.{kind}[{block} w{warps} {label}]", module=m.__name__, kernel=name,
                    signature=signature_for(fn, const, ptrs), constexprs=const,
                    num_warps=warps, num_stages=stages, tensor_cores=False,
                    # our outputs are fresh (256-byte aligned) allocations, inputs usually
                    # too; the "strided" variant assumes nothing
                    aligned=() if label == "strided" else tuple(pointers),
                ))
    return specs


def batchnorm_specs():
    """Every autotuned kernel x config in float32 NCHW (channel stride > 1, a contiguous
    run of R_IN = 32*32: BLOCK_C = 1, INNER = 1024; unit strides specialised to 1 as the
    JIT does), plus, on the first config of each kernel, the variants that change the
    generated code: fp16, bf16, channels-last (channel stride 1, BLOCK_C = 64, INNER = 1),
    INT64 offsets, and each kernel's modes; and the finalize kernels' block shapes."""
    m, k = batchnorm, batchnorm_kernels
    # kind: (kernel, streamed pointers, their unit-stride names (NCHW, channels-last), modes)
    kernels = {
        "stats": ("_bn_stats_kernel", ("x_ptr",), (("sxi",), ("sxc",)),
                  [("", dict(HAS_RUNNING=True)), ("no running", dict(HAS_RUNNING=False))]),
        "fwd_apply": ("_bn_fwd_apply_kernel", ("x_ptr", "y_ptr"), (("sxi", "syi"), ("sxc", "syc")),
                      [("fused", dict(STATS=1)), ("stats", dict(STATS=0)), ("eval", dict(STATS=2))]),
        "bwd_reduce": ("_bn_bwd_reduce_kernel", ("g_ptr", "x_ptr"), (("sgi", "sxi"), ("sgc", "sxc")), [("", {})]),
        "bwd_apply": ("_bn_bwd_apply_kernel", ("g_ptr", "x_ptr", "dx_ptr"),
                      (("sgi", "sxi", "sdi"), ("sgc", "sxc", "sdc")),
                      [("train fused", dict(TRAINING=True, COMBINE=True)),
                       ("train sums", dict(TRAINING=True, COMBINE=False)),
                       ("eval", dict(TRAINING=False, COMBINE=False))]),
    }
    base = dict(HAS_RUNNING=True, HAS_WEIGHT=True, HAS_BIAS=True, WRITE_DGAMMA=True, WRITE_DBETA=True,
                INT64=False, BLOCK_S=8)
    floats = ("momentum", "eps", "count")
    specs = []
    for kind, (name, streamed, unit, modes) in kernels.items():
        fn = getattr(k, name)
        for i, (tile, warps, stages) in enumerate(m.GPU_CONFIGS[kind]):
            runs = [(f"fp32 nchw {modes[0][0]}", "fp32", False, modes[0][1])]
            if i == 0:
                runs += [(f"fp32 nchw {label}", "fp32", False, over) for label, over in modes[1:]]
                runs += [("fp16 nchw", "fp16", False, modes[0][1]), ("bf16 nchw", "bf16", False, modes[0][1]),
                         ("fp32 channels-last", "fp32", True, modes[0][1]),
                         ("bf16 channels-last", "bf16", True, modes[0][1]),
                         ("fp32 nchw int64", "fp32", False, {**modes[0][1], "INT64": True}),
                         # (1, C) rows: the JIT specialises sizes of 1 to constexprs
                         ("fp32 channels-last R=1 S=1", "fp32", True, {**modes[0][1], "R_OUT": 1, "R_IN": 1,
                                                                        "S": 1})]
            for label, dtype, cl, over in runs:
                const = {key: v for key, v in base.items() if key in fn.arg_names}
                const.update(over, TILE=tile, BLOCK_C=m.CL_BLOCK_C if cl else 1, INNER=1 if cl else 1024)
                const.update({s: 1 for s in unit[1 if cl else 0]})
                ptrs = {p: "fp32" for p in fn.arg_names if p.endswith("_ptr")}
                ptrs.update({p: dtype for p in streamed})
                specs.append(KernelSpec(
                    name=f"batchnorm.{kind}[{tile} w{warps} s{stages} {label.strip()}]",
                    module=k.__name__, kernel=name, signature=signature_for(fn, const, ptrs, floats=floats),
                    constexprs=const, num_warps=warps, num_stages=stages, tensor_cores=False))
    for name, const in (("_bn_fwd_finalize_kernel", dict(HAS_RUNNING=True)),
                        ("_bn_bwd_finalize_kernel", dict(WRITE_DGAMMA=True, WRITE_DBETA=True))):
        fn = getattr(k, name)
        for s in (32, 64, 128, 256):
            block_s, block_c = m._finalize_blocks(s)
            full = dict(const, BLOCK_S=block_s, BLOCK_C=block_c)
            specs.append(KernelSpec(
                name=f"batchnorm.{name.split('_')[2]}_finalize[{block_s}x{block_c} w{m.FINALIZE_WARPS}]",
                module=k.__name__, kernel=name,
                signature=signature_for(fn, full, {p: "fp32" for p in fn.arg_names if p.endswith("_ptr")},
                                        floats=floats),
                constexprs=full, num_warps=m.FINALIZE_WARPS, num_stages=1, tensor_cores=False))
    return specs


def cross_entropy_specs():
    """Every kernel x config three times: float32 with 16-byte-aligned pointers and unit
    column strides (what Triton specialises a launch on contiguous, aligned arrays to:
    the vectorised code a GPU runs), float32 with unaligned pointers (a view starting
    mid-row: one element per access, more registers), and the heaviest variant, bf16 +
    INT64 (+ label smoothing and "mean" for the cross-entropy forward, log-softmax for
    the softmax kernels), aligned. The first config of each kernel also in fp16, with a
    general column stride, and with C = 1 and one row (Triton turns int arguments equal
    to 1 into constants, which changes the code); the count kernel twice; the total
    kernel per reduction and dtype."""
    m = cross_entropy
    kernels = {  # kind: (kernel, float pointers, other pointers, base constexprs, heavy overrides)
        "ce_fwd": ("_ce_fwd_kernel", ("z_ptr", "grad_ptr"), {"t_ptr": "i64", "info_ptr": "i32", "loss_ptr": "fp32"},
                   dict(MEAN=False, SMOOTH=False, szc=1, st=1), dict(MEAN=True, SMOOTH=True, INT64=True)),
        "ce_bwd": ("_ce_bwd_kernel", ("gl_ptr", "g_ptr", "dz_ptr"), {}, dict(sgc=1), dict(INT64=True)),
        "softmax_fwd": ("_softmax_fwd_kernel", ("x_ptr", "y_ptr"), {}, dict(LOG=False), dict(LOG=True, INT64=True)),
        "softmax_bwd": ("_softmax_bwd_kernel", ("g_ptr", "y_ptr", "dx_ptr"), {}, dict(LOG=False),
                        dict(LOG=True, INT64=True)),
    }
    specs = []
    for kind, (name, floats, others, base, heavy) in kernels.items():
        fn = getattr(m, name)
        pointers = tuple(a for a in fn.arg_names if a.endswith("_ptr"))
        for i, (rows, block, warps, stages) in enumerate(m.GPU_CONFIGS[kind]):
            # (label, dtype, constexpr overrides, aligned pointers)
            runs = [("fp32", "fp32", {}, True), ("fp32 unaligned", "fp32", {}, False),
                    ("bf16 heavy", "bf16", heavy, True)]
            if i == 0:
                runs.append(("fp16", "fp16", {}, True))
                # a size argument equal to 1 also arrives as a constant: C = 1 classes, one row
                runs.append(("fp32 C=1 rows=1", "fp32", {"C": 1, "R" if "R" in fn.arg_names else "N": 1}, True))
                if "szc" in base or "sgc" in base:
                    runs.append(("fp32 strided", "fp32", {k: None for k in ("szc", "sgc") if k in base}, True))
            for label, dtype, over, aligned in runs:
                const = dict(ALIGN=16, INT64=False, ROWS=rows, BLOCK=block, **base)
                const.update(over)
                const = {k: v for k, v in const.items() if v is not None}
                ptrs = {p: dtype for p in floats}
                ptrs.update(others)
                if kind == "ce_bwd" and dtype == "bf16":
                    ptrs["g_ptr"] = "fp32"  # the upstream gradient may be float32
                specs.append(KernelSpec(
                    name=f"cross_entropy.{kind}[{rows}x{block} w{warps} s{stages} {label}]",
                    module=m.__name__, kernel=name,
                    signature=signature_for(fn, const, ptrs, floats=("smoothing",)), constexprs=const,
                    num_warps=warps, num_stages=stages, tensor_cores=False,
                    aligned=pointers if aligned else (),
                ))
    for label, const in (("", dict(INT64=False, BLOCK=m.COUNT_BLOCK, st=1)),
                         (" int64 strided", dict(INT64=True, BLOCK=m.COUNT_BLOCK))):
        specs.append(KernelSpec(
            name=f"cross_entropy.count[{m.COUNT_BLOCK} w{m.COUNT_WARPS}{label}]", module=m.__name__,
            kernel="_ce_count_kernel", constexprs=const,
            signature=signature_for(m._ce_count_kernel, const, {"t_ptr": "i64", "info_ptr": "i32"}),
            num_warps=m.COUNT_WARPS, num_stages=1, tensor_cores=False, aligned=("t_ptr", "info_ptr"),
        ))
    for mean in (True, False):
        for dtype in ("fp32", "fp16", "bf16"):
            const = dict(MEAN=mean, BLOCK=m.TOTAL_BLOCK)
            specs.append(KernelSpec(
                name=f"cross_entropy.total[{'mean' if mean else 'sum'} {dtype}]", module=m.__name__,
                kernel="_ce_total_kernel", constexprs=const,
                signature=signature_for(m._ce_total_kernel, const,
                                        {"per_row_ptr": "fp32", "info_ptr": "i32", "loss_ptr": dtype}),
                num_warps=m.COUNT_WARPS, num_stages=1, tensor_cores=False,
            ))
    return specs


# ----------------------------------------------------------------------------- optimizers

_OPTIM_POINTERS = {
    "_sgd_kernel": ("p_ptr", "g_ptr", "buf_ptr"),
    "_adagrad_kernel": ("p_ptr", "g_ptr", "sum_ptr"),
    "_rmsprop_kernel": ("p_ptr", "g_ptr", "sq_ptr", "avg_ptr", "buf_ptr"),
    "_adam_kernel": ("p_ptr", "g_ptr", "m_ptr", "v_ptr", "vmax_ptr"),
}
_OPTIM_STEP_OFF = {  # host scalars (the default; "device step" variants switch it on)
    "_sgd_kernel": {}, "_rmsprop_kernel": {},
    "_adagrad_kernel": dict(DEVICE_STEP=False), "_adam_kernel": dict(DEVICE_STEP=False),
}
_OPTIM_ALL_ON = {  # every option of each kernel switched on (the most code)
    "_sgd_kernel": dict(MOMENTUM=True, NESTEROV=True, FIRST=False, WEIGHT_DECAY=True, MAXIMIZE=True),
    "_adagrad_kernel": dict(WEIGHT_DECAY=True, MAXIMIZE=True),
    "_rmsprop_kernel": dict(CENTERED=True, MOMENTUM=True, WEIGHT_DECAY=True, MAXIMIZE=True),
    "_adam_kernel": dict(AMSGRAD=True, DECOUPLED=True, WEIGHT_DECAY=True, MAXIMIZE=True),
}


def _optim_signature(fn, const, pointers, table="i32", int64=False):
    """Pointers typed by ``pointers`` (name -> Triton type), annotated floats fp64, the
    size / index arguments i32 (i64 with INT64)."""
    sig = {}
    for name in fn.arg_names:
        if name in const:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = "*" + pointers[name]
        elif name == "table_ptr":
            sig[name] = "*" + table
        elif name in ("scale_ptr", "partial_ptr", "out_ptr"):
            sig[name] = "*" + pointers.get("_accumulate", "fp32")
        elif name == "hyper_ptr":  # unused without DEVICE_STEP: the launcher passes p there
            sig[name] = "*fp64" if const.get("DEVICE_STEP") or "p_ptr" not in pointers else "*" + pointers["p_ptr"]
        elif name == "step_ptr":
            sig[name] = "*" + pointers.get("step_ptr", "fp32")
        elif name in ("index_ptr", "counter_ptr"):
            sig[name] = "*i32"
        elif fn.params[fn.arg_names.index(name)].annotation == "fp64":
            sig[name] = "fp64"
        else:
            sig[name] = "i64" if int64 and name == "n" else "i32"
    return sig


def optim_specs():
    """Every update kernel x GPU config (float32, every option on, whole buffer), plus,
    on the default config, the variants that change the generated code: bf16 / fp16
    gradients with float32 master weights, bf16 parameters, float64, a segment table,
    a device clipping coefficient, plain options, INT64 offsets, and (Adam, Adagrad) the
    step-dependent scalars loaded from the device (capturable: whole buffer, table,
    float64); the step advance of capturable updates (each mode, with and without an
    index table, float32 and int32 counts); and the norm reduction (float32, bf16
    gradients with a table, float64, INT64)."""
    m, k = optim, optim_kernels
    table = {"HAS_TABLE": 2, "BLOCK": m.TABLE_BLOCK}
    specs = []
    for name, pointers in _OPTIM_POINTERS.items():
        fn = getattr(k, name)
        for cfg in m.GPU_CONFIGS:
            runs = [("fp32", "fp32", "fp32", {})]
            if cfg == m.DEFAULT_CONFIG:
                runs += [
                    ("fp32 p bf16 g", "fp32", "bf16", {}),
                    ("fp32 p fp16 g", "fp32", "fp16", {}),
                    ("bf16", "bf16", "bf16", {}),
                    ("fp64", "fp64", "fp64", {"CDT": tl.float64}),
                    ("table", "fp32", "fp32", table),
                    ("table unaligned", "fp32", "fp32", {**table, "HAS_TABLE": 1}),
                    ("scale ptr", "fp32", "fp32", {"SCALE": m._SCALE_POINTER}),
                    ("plain", "fp32", "fp32", {**{key: False for key in _OPTIM_ALL_ON[name]},
                                               "SCALE": m._SCALE_NONE}),
                    ("int64", "fp32", "fp32", {"INT64": True, "BLOCK": m.TABLE_BLOCK}),
                ]
                if _OPTIM_STEP_OFF[name]:
                    runs += [
                        ("device step", "fp32", "fp32", {"DEVICE_STEP": True}),
                        ("device step table", "fp32", "fp32", {"DEVICE_STEP": True, **table}),
                        ("device step fp64", "fp64", "fp64", {"DEVICE_STEP": True, "CDT": tl.float64}),
                    ]
            for label, pdt, gdt, over in runs:
                const = dict(_OPTIM_ALL_ON[name], **_OPTIM_STEP_OFF[name], SCALE=m._SCALE_VALUE, HAS_TABLE=0,
                             INT64=False, CDT=tl.float32, BLOCK=cfg[0])
                const.update(over)
                warps, stages = cfg[1:]
                if const["BLOCK"] == m.TABLE_BLOCK and (const["HAS_TABLE"] or const["INT64"]):
                    warps, stages = m.FIXED_CONFIG[1:]
                ptrs = {p: pdt for p in pointers}
                ptrs["g_ptr"] = gdt
                specs.append(KernelSpec(
                    name=f"optim.{name[1:-7]}[{const['BLOCK']} w{warps} {label}]", module=k.__name__, kernel=name,
                    signature=_optim_signature(fn, const, ptrs, "i64" if const["INT64"] else "i32", const["INT64"]),
                    constexprs=const, num_warps=warps, num_stages=stages, tensor_cores=False,
                ))
    for mode, mode_name in ((m._STEP_ADAM, "adam"), (m._STEP_ADAGRAD, "adagrad")):
        for has_index in (False, True):
            for sdt in ("fp32", "i32"):
                const = dict(MODE=mode, HAS_INDEX=has_index, BLOCK=m.STEP_BLOCK)
                specs.append(KernelSpec(
                    name=f"optim.step[{m.STEP_BLOCK} w4 {mode_name}{' index' if has_index else ''} {sdt}]",
                    module=k.__name__, kernel="_step_kernel",
                    signature=_optim_signature(k._step_kernel, const, {"step_ptr": sdt}),
                    constexprs=const, num_warps=4, num_stages=1, tensor_cores=False,
                ))
    for label, gdt, acc, over in [("fp32", "fp32", "fp32", {}),
                                  ("bf16 table", "bf16", "fp32", {"HAS_TABLE": 2}),
                                  ("fp64", "fp64", "fp64", {"CDT": tl.float64}),
                                  ("int64", "fp32", "fp32", {"INT64": True})]:
        const = dict(HAS_TABLE=0, INT64=False, CDT=tl.float32, BLOCK=m.REDUCE_BLOCK, FINAL_BLOCK=1024)
        const.update(over)
        specs.append(KernelSpec(
            name=f"optim.sumsq[{m.REDUCE_BLOCK} w4 {label}]", module=k.__name__, kernel="_sumsq_kernel",
            signature=_optim_signature(k._sumsq_kernel, const, {"g_ptr": gdt, "_accumulate": acc},
                                       "i64" if const["INT64"] else "i32", const["INT64"]),
            constexprs=const, num_warps=4, num_stages=1, tensor_cores=False,
        ))
    return specs


#: Each op family's specs, by the name ``--family`` takes.
SPECS = {
    "activation": activation_specs, "batchnorm": batchnorm_specs, "cast": cast_specs, "conv": conv_specs,
    "cross_entropy": cross_entropy_specs, "dropout": dropout_specs, "linear": linear_specs, "loss": loss_specs,
    "optim": optim_specs, "pool": pool_specs,
}
