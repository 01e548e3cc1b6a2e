"""Per-pixel scalar mathematics of the fusion, one source for every compiled target.

Each function here is plain Python on scalars, written so that the same source
compiles with ``numba.njit`` (the CPU kernel in :mod:`.fused`),
with ``numba.cuda.jit(device=True)`` (a GPU kernel can call these, as numba
compiles jitted functions for the device), and runs as is on NumPy scalars
(numba's CUDA simulator). That is the point of keeping them apart: one
description of the per-pixel mathematics, not two drifting copies.

``exp``, ``log``, ``log10`` and ``tanh`` are our own, in plain arithmetic
(range reduction, a polynomial, and a scale by a power of two built from its
bits), accurate to about one unit in the last place. Unlike calls into the C
library they vectorise (LLVM turns the per-voxel loops into SIMD code), and
they give the same bits on every CPU: they use only IEEE additions,
multiplications and divisions, which are correctly rounded everywhere. They
are compiled without ``fastmath`` (no reassociation, no contraction into fused
multiply-adds), so each result is a fixed sequence of roundings. CUDA's compiler contracts
``a * b + c`` even without ``fastmath``; the CUDA kernels (:mod:`.cuda_kernels`)
therefore compile these sources with every product replaced by ``libdevice.dmul_rn``
(:func:`compile_for`), which is never contracted, and get the same roundings.

NumPy's own ``exp``/``tanh``/``log`` (used by the NumPy engine in
:mod:`.block`) differ from these in the last bit now and then;
the two engines are therefore compared by their rounded output, and one run
uses one engine only.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import types

import numpy as np

from .jit import jit

__all__ = [
    "exp",
    "gauss_fit",
    "median9",
    "model",
    "log",
    "log10",
    "phi_from_s",
    "round_half_even",
    "tanh",
    "weight",
]

_LN2_HI = 6.93147180369123816490e-01  # ln 2 with 21 trailing zero bits: k * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10  # ln 2 - _LN2_HI
_INV_LN2 = 1.44269504088896338700e00
_INV_LN10 = 0.43429448190325182765
_SHIFTER = 6755399441055744.0  # 1.5 * 2**52: adding it rounds to an integer, kept in the low bits
_SHIFTER_BITS = 0x4338000000000000
_TWO52 = 4503599627370496.0
_TWO54 = 18014398509481984.0
_SQRT2 = 1.4142135623730951
_MANTISSA = 0x000FFFFFFFFFFFFF
_ONE_BITS = 0x3FF0000000000000

# exp(r) = 1 + r + r^2 q(r) on |r| <= ln2 / 2: q's Taylor coefficients 1/(k + 2)!, to r^11 (the
# first term left out, r^14 / 14!, is below 5e-18 there).
_E2 = 1.0 / 2.0
_E3 = 1.0 / 6.0
_E4 = 1.0 / 24.0
_E5 = 1.0 / 120.0
_E6 = 1.0 / 720.0
_E7 = 1.0 / 5040.0
_E8 = 1.0 / 40320.0
_E9 = 1.0 / 362880.0
_E10 = 1.0 / 3628800.0
_E11 = 1.0 / 39916800.0
_E12 = 1.0 / 479001600.0
_E13 = 1.0 / 6227020800.0

# log(1 + f) = 2 atanh(s), s = f / (2 + f), |s| <= 0.1716: 2 atanh(s) = 2 s + s R(s^2) with
# R(z) = sum 2 z^k / (2k + 1), k = 1 .. 12 (the first term left out is below 1e-19).
_L1 = 2.0 / 3.0
_L2 = 2.0 / 5.0
_L3 = 2.0 / 7.0
_L4 = 2.0 / 9.0
_L5 = 2.0 / 11.0
_L6 = 2.0 / 13.0
_L7 = 2.0 / 15.0
_L8 = 2.0 / 17.0
_L9 = 2.0 / 19.0
_L10 = 2.0 / 21.0
_L11 = 2.0 / 23.0
_L12 = 2.0 / 25.0


def _pow2(t):
    """``2**k`` from ``t = 1.5 * 2**52 + k`` (integer ``k`` in [-1022, 1023]), built from bits.

    Only the low 12 bits of ``t``'s representation matter once shifted, and those of
    1.5 * 2**52 are zero; 64-bit shifts left and additions vectorise on every x86-64.
    """
    return np.int64((np.float64(t).view(np.int64) + 1023) << 52).view(np.float64)


def _reduce(x):
    """``(t, e)`` with ``exp(x) = 2**k (1 + e)``, ``t = 1.5 * 2**52 + k``, for ``|x| <= 1100``."""
    t = x * _INV_LN2 + _SHIFTER  # rounds x / ln 2 to the nearest integer k
    kd = t - _SHIFTER
    r = (x - kd * _LN2_HI) - kd * _LN2_LO
    # q(r) by Estrin's scheme: a short dependency chain, so SIMD lanes keep the FPU busy.
    r2 = r * r
    r4 = r2 * r2
    q = ((_E2 + _E3 * r) + r2 * (_E4 + _E5 * r)) + r4 * (
        ((_E6 + _E7 * r) + r2 * (_E8 + _E9 * r)) + r4 * ((_E10 + _E11 * r) + r2 * (_E12 + _E13 * r))
    )
    return t, r + r2 * q


def exp(x):
    """``e**x`` to about 1 ulp, for any float64 (overflow to inf, underflow to 0, NaN kept)."""
    xc = x if x > -1100.0 else -1100.0
    xc = xc if xc < 710.0 else 710.0
    t, e = _reduce(xc)
    # 2**k as two normal factors 2**k1 2**(k - k1), so that a subnormal result is rounded
    # once, at the end; k1 = round(k / 2), all in floating point (no 64-bit right shifts).
    kd = t - _SHIFTER
    t1 = kd * 0.5 + _SHIFTER
    t2 = (kd - (t1 - _SHIFTER)) + _SHIFTER
    y = ((1.0 + e) * _pow2(t1)) * _pow2(t2)
    return y if x == x else x


def tanh(x):
    """Hyperbolic tangent to a few ulp, from ``expm1(2|x|)``; ``tanh(+-inf) = +-1``."""
    a = x if x >= 0.0 else -x
    a = a if a < 22.0 else 22.0  # tanh(22) rounds to 1
    t, e = _reduce(2.0 * a)
    scale = _pow2(t)
    em = scale * e + (scale - 1.0)  # expm1(2a) = 2**k (1 + e) - 1, accurate for small a
    y = em / (em + 2.0)
    y = y if x >= 0.0 else -y
    return y if x == x else x


def log(x):
    """Natural logarithm to about 1 ulp; ``log(0) = -inf``, negative -> NaN, inf and NaN kept."""
    tiny = x < 2.2250738585072014e-308
    xs = x * _TWO54 if tiny else x  # subnormals: scale into the normal range first
    bits = np.float64(xs).view(np.uint64)
    # The biased exponent as a float, through the shifter (no 64-bit integer conversion).
    eb = np.uint64((bits >> np.uint64(52)) | np.uint64(_SHIFTER_BITS)).view(np.float64)
    e = (eb - _SHIFTER) - (1023.0 + 54.0 if tiny else 1023.0)
    m = np.uint64((bits & np.uint64(_MANTISSA)) | np.uint64(_ONE_BITS)).view(np.float64)
    big = m > _SQRT2  # m in [1, 2); bring it to [sqrt(1/2), sqrt(2))
    m = 0.5 * m if big else m
    e = e + 1.0 if big else e
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    r = _L12
    r = r * z + _L11
    r = r * z + _L10
    r = r * z + _L9
    r = r * z + _L8
    r = r * z + _L7
    r = r * z + _L6
    r = r * z + _L5
    r = r * z + _L4
    r = r * z + _L3
    r = r * z + _L2
    r = r * z + _L1
    r = r * z
    hfsq = 0.5 * f * f
    # log(m) = f - hfsq + s (hfsq + R), as fdlibm arranges it to keep the roundings small.
    y = e * _LN2_HI - ((hfsq - (s * (hfsq + r) + e * _LN2_LO)) - f)
    # 0 -> -inf, negative or NaN -> NaN, +inf -> +inf (few selects: LLVM then vectorises).
    ok = (x > 0.0) & (x < np.inf)
    special = -np.inf if x == 0.0 else (x if x > 0.0 else np.nan)
    return y if ok else special


def log10(x):
    """Base-10 logarithm, ``log(x) / ln 10``."""
    return log(x) * _INV_LN10


def round_half_even(x):
    """Round to the nearest integer, ties to even (NumPy's ``round``), as a float."""
    a = x if x >= 0.0 else -x
    r = (a + _TWO52) - _TWO52 if a < _TWO52 else a  # the FPU's own round-to-nearest-even
    return r if x >= 0.0 else -r


def gauss_fit(x1, x2, x3, y1, y2):
    """``(u, s_squared, log_amp)`` of the reference's fit, with ``y3 = y1`` (``_gauss3p``).

    The same expressions in the same order as the reference (and the NumPy
    engine); the amplitude is ``exp(log_amp)``, left to the caller so that the
    compiled loops stay small enough to vectorise.
    """
    y3 = y1
    c = ((y1 - y2) * (x2 - x3) - (y2 - y3) * (x1 - x2)) / (
        (x1 * x1 - x2 * x2) * (x2 - x3) - (x2 * x2 - x3 * x3) * (x1 - x2)
    )
    b = ((y2 - y3) - c * (x2 - x3) * (x2 + x3 + 2)) / (x2 - x3)
    s_squared = -1 / (2 * c)
    u = b * s_squared
    a = y1 - b * (x1 + 1) - c * ((x1 + 1) * (x1 + 1))
    return u, s_squared, a + (u * u) / (2 * s_squared)


def model(fp, u, s_squared, amp):
    """The fitted Gaussian at focus position ``fp`` (the reference's MATLAB ``+1``)."""
    t = fp + 1 - u
    return amp * exp(-(t * t) / (2 * s_squared))


def misfit(fm, y, x, focus, step, u, s_squared, amp):
    """The reference's ``err`` at one pixel: ``sum_p |fm[p] - model(focus[p])|``.

    With evenly spaced planes (``step != 0``) the Gaussian is evaluated by a recurrence
    from the plane nearest its centre, outwards both ways: the ratio of neighbouring values
    is itself a geometric sequence, so each plane costs two products instead of an
    ``exp`` (4 ``exp`` per pixel instead of one per voxel). Outwards from the centre the
    values shrink (or, for an inverted fit, grow) monotonically, so underflow to 0 (or
    overflow to inf) happens where the direct formula's would. The sum runs from the centre
    plane up, then down: a fixed order for each pixel, whatever block it lies in. Other
    spacings, and fits that are not finite, use the direct formula plane by plane.
    """
    n_planes = fm.shape[0]
    err = 0.0
    finite = u - u == 0.0 and s_squared - s_squared == 0.0 and amp - amp == 0.0
    if step == 0.0 or not finite or s_squared == 0.0:
        for p in range(n_planes):
            err += abs(np.float64(fm[p, y, x]) - model(focus[p], u, s_squared, amp))
        return err
    centre = (u - 1.0 - focus[0]) / step
    centre = centre if centre > 0.0 else 0.0
    top = n_planes - 1.0
    centre = centre if centre < top else top
    start = int(centre + 0.5)
    g0 = model(focus[start], u, s_squared, amp)
    t = focus[start] + 1.0 - u
    two = 2.0 * s_squared
    c = exp(-(step * step) / s_squared)
    g = g0
    r = exp(-(step * (2.0 * t + step)) / two)
    for p in range(start, n_planes):
        err += abs(np.float64(fm[p, y, x]) - g)
        g = g * r
        r = r * c
    g = g0
    r = exp((step * (2.0 * t - step)) / two)
    for p in range(start - 1, -1, -1):
        g = g * r
        r = r * c
        err += abs(np.float64(fm[p, y, x]) - g)
    return err


def phi_from_s(s, alpha, sth, fill):
    """The sharpening parameter ``phi = 0.5 (1 + tanh(alpha (S - sth))) / alpha``; an undefined
    (NaN) ``S`` is taken as ``fill`` (the image's smallest ``S``, as the reference fills it)."""
    s = s if s == s else fill
    return 0.5 * (1 + tanh(alpha * (s - sth))) / alpha


def weight(phi, fmn):
    """Blending weight ``0.5 + 0.5 tanh(phi (fmn - 1))`` of a plane with normalised measure fmn."""
    return 0.5 + 0.5 * tanh(phi * (fmn - 1))


def _sort2(a, b):
    return (a, b) if a <= b else (b, a)


def median9(p0, p1, p2, p3, p4, p5, p6, p7, p8):
    """Median of nine values by a 19-exchange network (Paeth/Devillard), no branches on data."""
    p1, p2 = _sort2(p1, p2)
    p4, p5 = _sort2(p4, p5)
    p7, p8 = _sort2(p7, p8)
    p0, p1 = _sort2(p0, p1)
    p3, p4 = _sort2(p3, p4)
    p6, p7 = _sort2(p6, p7)
    p1, p2 = _sort2(p1, p2)
    p4, p5 = _sort2(p4, p5)
    p7, p8 = _sort2(p7, p8)
    p0, p3 = _sort2(p0, p3)
    p5, p8 = _sort2(p5, p8)
    p4, p7 = _sort2(p4, p7)
    p3, p6 = _sort2(p3, p6)
    p1, p4 = _sort2(p1, p4)
    p2, p5 = _sort2(p2, p5)
    p4, p7 = _sort2(p4, p7)
    p4, p2 = _sort2(p4, p2)
    p6, p4 = _sort2(p6, p4)
    p4, p2 = _sort2(p4, p2)
    return p4


#: The pure-Python sources, for other targets (``numba.cuda.jit(device=True)``).
PY_FUNCS = {
    name: globals()[name]
    for name in (
        "_pow2",
        "_reduce",
        "_sort2",
        "exp",
        "tanh",
        "log",
        "log10",
        "round_half_even",
        "gauss_fit",
        "model",
        "misfit",
        "phi_from_s",
        "weight",
        "median9",
    )
}


def compile_for(decorate, *, multiply=None):
    """Every function of :data:`PY_FUNCS` decorated for one target, calling each other.

    ``decorate`` is e.g. ``numba.cuda.jit(device=True)``, or the identity for
    plain Python on NumPy scalars. Each function gets a fresh namespace in
    which the names of the others are their versions for the same target.

    ``multiply``, if given, replaces every product ``a * b`` of the sources (all
    of them on floats) by ``multiply(a, b)``. The CUDA target passes a multiply
    that is never fused with a following addition (``libdevice.dmul_rn``): NVVM
    contracts ``a * b + c`` into one fused multiply-add by default, which rounds
    once instead of twice and so changes the last bits; with it, each function
    does the same IEEE roundings as the CPU code, in the same order.

    Returns
    -------
    dict
        Function name to decorated function.
    """
    namespace = dict(globals())
    if multiply is not None:
        namespace["_multiply"] = multiply
    out = {}
    for name, func in PY_FUNCS.items():
        if multiply is None:
            fresh = types.FunctionType(func.__code__, namespace, name, func.__defaults__)
        else:
            fresh = _with_calls_for_products(func, namespace)
        out[name] = namespace[name] = decorate(fresh)
    return out


class _ProductsToCalls(ast.NodeTransformer):
    """``a * b`` -> ``_multiply(a, b)`` (and ``a *= b`` -> ``a = _multiply(a, b)``)."""

    def visit_BinOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, ast.Mult):
            call = ast.Call(ast.Name("_multiply", ast.Load()), [node.left, node.right], [])
            return ast.copy_location(call, node)
        return node

    def visit_AugAssign(self, node):
        self.generic_visit(node)
        if isinstance(node.op, ast.Mult) and isinstance(node.target, ast.Name):
            value = ast.Call(
                ast.Name("_multiply", ast.Load()),
                [ast.Name(node.target.id, ast.Load()), node.value],
                [],
            )
            return ast.copy_location(ast.Assign([node.target], value), node)
        return node


def _with_calls_for_products(func, namespace):
    """``func`` recompiled from its source with every product a call of ``_multiply``."""
    lines, first = inspect.getsourcelines(func)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    tree = ast.fix_missing_locations(_ProductsToCalls().visit(tree))
    ast.increment_lineno(tree, first - 1)  # tracebacks point at the real lines
    code = compile(tree, inspect.getsourcefile(func), "exec")
    scope: dict = {}
    exec(code, namespace, scope)  # noqa: S102 - our own source, transformed
    return scope[func.__name__]


if jit is not None:
    # Replace each function by its compiled version: the compiled callers (and these
    # functions calling each other) resolve the names at compile time.
    for _name, _func in PY_FUNCS.items():
        globals()[_name] = jit(_func)
