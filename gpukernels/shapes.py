"""Argument pairs and output sizes: a leaf module (imports nothing of the library).

The public functions and the layers check a ``kernel_size`` / ``stride`` / ... argument
once with ``check_pair``; kernels, which receive checked arguments, read them with
``pair``. ``conv2d_output_size`` is PyTorch's formula, shared by convolution and pooling.
"""

from __future__ import annotations

import numbers


def is_int(value) -> bool:
    """An integer that is not a bool (NumPy integers included)."""
    if type(value) is int:  # the common case, without the ABC check (~0.3 us a call)
        return True
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def pair(value) -> tuple[int, int]:
    """``(v, v)`` for an int, ``(int(v[0]), int(v[1]))`` for a pair: for checked arguments."""
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def check_pair(value, name: str, minimum: int, layer: str | None = None) -> tuple[int, int]:
    """``value`` (an int or a pair of ints, each >= ``minimum``) as a pair.

    Raises TypeError naming ``name`` and the value received; for a layer's constructor
    argument (``layer="Conv2d"``) a ValueError that names the layer too, as every
    layer's argument errors do.
    """
    if is_int(value):
        result = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(is_int(v) for v in value):
        result = (int(value[0]), int(value[1]))
    elif layer is None:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    else:
        raise ValueError(f"{layer}: {name} must be an int or a pair of ints (each >= {minimum}), got {value!r}")
    if min(result) < minimum:
        raise ValueError(f"{layer + ': ' if layer else ''}{name} must be >= {minimum}, got {value!r}")
    return result


def conv2d_output_size(h, w, kernel, stride, padding, dilation):
    """Output ``(oh, ow)`` of a convolution (or pooling window) over an ``h x w`` input,
    PyTorch's formula: ``(h + 2 p - d (k - 1) - 1) // s + 1`` per axis.

    ``kernel``, ``stride``, ``padding``, ``dilation`` are ints or ``(h, w)`` pairs; the
    result may be ``<= 0`` when the kernel does not fit (the caller rejects that).
    """
    kh, kw = pair(kernel)
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    dh, dw = pair(dilation)
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return oh, ow


def broadcast_shape(op, a, b) -> tuple:
    """NumPy's broadcast of shapes ``a`` and ``b``; a ValueError naming ``op``, both
    shapes and the first dimension that differs when they do not broadcast."""
    a, b = tuple(a), tuple(b)
    if a == b:
        return a
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        m = a[-i] if i <= len(a) else 1
        n = b[-i] if i <= len(b) else 1
        if m != n and m != 1 and n != 1:
            raise ValueError(
                f"{op}: shapes {a} and {b} cannot be broadcast together: size {m} (dimension "
                f"{len(a) - i} of the first) does not match size {n} (dimension {len(b) - i} of the "
                "second), and neither is 1")
        out.append(max(m, n) if m != 1 and n != 1 else m * n)
    return tuple(reversed(out))
