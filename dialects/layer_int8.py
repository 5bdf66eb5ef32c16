"""Bit-exact int8 references for the layer dialect: TFLite's reference integer kernels in NumPy.

`reference(op, *inputs)` runs one int8 layer op the way the TFLite interpreter's *reference* kernels
(BUILTIN_REF op resolver) do, bit for bit: the same fixed-point multipliers (QuantizeMultiplier),
the same double rounding (SaturatingRoundingDoublingHighMul then RoundingDivideByPOT), the same
float32-or-double arithmetic where the kernels prepare their constants, and the same lookup tables
and gemmlowp fixed-point exp/reciprocal for logistic, tanh and softmax.

    y = layer_int8.reference(conv_op, x_int8)          # np.int8, equal to TFLite's output

Conventions of the IR (DESIGN, layer dialect): activations are per-tensor `!quant.uniform` types;
conv/dense kernels are per-channel along their output-channel axis (or per-tensor); biases are i32
with scale input_scale * weight_scale[c] and zero point 0. All arithmetic is vectorised over int64
arrays that hold int32 values, so C's int32 results are reproduced without overflow in NumPy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ml4f.compiler.types import QuantType, TensorType
from ml4f.dialects import layer

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
I8_MIN, I8_MAX = -128, 127


# ----------------------------------------------------------------------------- fixed-point primitives


def _f32(x: float) -> float:
    """The float32 value TFLite stores for a scale (its flatbuffer holds float32)."""
    return float(np.float32(x))


def round_half_away(x: np.ndarray | float) -> np.ndarray:
    """C's round()/TfLiteRound: halves go away from zero (NumPy's rint goes to even)."""
    x = np.asarray(x)
    return np.sign(x) * np.floor(np.abs(x) + x.dtype.type(0.5))


def quantize_multiplier(real: float) -> tuple[int, int]:
    """tflite::QuantizeMultiplier: real = m * 2^(shift - 31) with m an int32 in [2^30, 2^31).

    >>> quantize_multiplier(0.5)
    (1073741824, 0)
    """
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = int(round_half_away(q * (1 << 31)))
    assert q_fixed <= (1 << 31)
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q_fixed, shift


def _trunc_div_pot(n: np.ndarray, bits: int) -> np.ndarray:
    """C integer division by 2^bits (rounds toward zero) on int64 arrays."""
    return np.where(n >= 0, n >> bits, -((-n) >> bits))


def srdhm(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp::SaturatingRoundingDoublingHighMul for int32: round(a * b / 2^31), saturating."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    out = _trunc_div_pot(ab + nudge, 31)
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, out)


def rdbpot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp::RoundingDivideByPOT: x / 2^exponent rounded to nearest, ties away from zero."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def srmbpot(x: np.ndarray, exponent: int) -> np.ndarray:
    """gemmlowp::SaturatingRoundingMultiplyByPOT<exponent> on int32 raw values."""
    x = np.asarray(x, dtype=np.int64)
    if exponent == 0:
        return x
    if exponent < 0:
        return rdbpot(x, -exponent)
    threshold = (1 << (31 - exponent)) - 1
    return np.where(x > threshold, INT32_MAX, np.where(x < -threshold, INT32_MIN, x << exponent))


def mbqm(x: np.ndarray, multiplier: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """tflite::MultiplyByQuantizedMultiplier (double rounding); multiplier/shift may be per channel."""
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    x = np.asarray(x, dtype=np.int64) * (np.int64(1) << left)
    return rdbpot(srdhm(x, multiplier), right)


def _wrap16(x: np.ndarray) -> np.ndarray:
    """Truncation to int16 as a C cast does (values kept in int64)."""
    return ((np.asarray(x, dtype=np.int64) + (1 << 15)) & 0xFFFF) - (1 << 15)


def _srdhm16(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp::SaturatingRoundingDoublingHighMul for int16."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    out = _wrap16(_trunc_div_pot(ab + nudge, 15))
    return np.where((a == -32768) & (b == -32768), 32767, out)


# ----------------------------------------------------------------------------- quantization parameters


def _qtype(op: layer.LayerOp, t: object, what: str) -> QuantType:
    if not isinstance(t, TensorType) or t.quant is None:
        raise op.error(f"int8 {op.name} needs a quantized {what}, got {t}")
    q = t.quant
    if q.storage.bits != 8:
        raise op.error(f"int8 {op.name} is not supported: {what} has {q.storage} storage (only i8)")
    return q


def _per_tensor(op: layer.LayerOp, t: object, what: str) -> tuple[float, int]:
    """(scale as TFLite's float32, zero point) of a per-tensor quantized activation."""
    q = _qtype(op, t, what)
    if len(q.scales) != 1:
        raise op.error(f"int8 {op.name} needs a per-tensor quantized {what}, got {t}")
    return _f32(q.scale), q.zero_point


def _in_q(op: layer.LayerOp, i: int = 0) -> tuple[float, int]:
    return _per_tensor(op, op.operands[i].type, "input" if len(op.operands) == 1 else f"operand #{i}")


def _out_q(op: layer.LayerOp) -> tuple[float, int]:
    return _per_tensor(op, op.result.type, "result")


def activation_range(activation: str, scale: float, zero_point: int) -> tuple[int, int]:
    """CalculateActivationRangeQuantized: the int8 clamp of a fused relu/relu6 (f / scale in float32)."""
    def quantize(f: float) -> int:
        return zero_point + int(round_half_away(np.float32(f) / np.float32(scale)))

    if activation == "relu":
        return max(I8_MIN, quantize(0.0)), I8_MAX
    if activation == "relu6":
        return max(I8_MIN, quantize(0.0)), min(I8_MAX, quantize(6.0))
    return I8_MIN, I8_MAX


def _same_quant(op: layer.LayerOp, what: str) -> tuple[float, int]:
    """Ops that move int8 values unchanged need the input's quantization on the result too."""
    sin, zin = _in_q(op)
    sout, zout = _out_q(op)
    if sin != sout or zin != zout:
        raise op.error(f"int8 {op.name} is not supported with different input and result quantization "
                       f"({sin}:{zin} vs {sout}:{zout}); {what}")
    return sout, zout


def _i8(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(np.int8)


def _clamp_i8(x: np.ndarray, lo: int = I8_MIN, hi: int = I8_MAX) -> np.ndarray:
    return np.clip(x, lo, hi).astype(np.int8)


# ----------------------------------------------------------------------------- convolution and dense


def _weights_q(op: layer.LayerOp, key: str, channels: int,
               axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int8 weights as int64, per-channel float32 scales, zero points) broadcast to `channels`;
    per-channel quantization must run along `axis`, the output-channel axis of the layout."""
    res = op.get_attr(key)
    q = _qtype(op, res.type, f"{key} (weights)")
    if q.axis is not None and q.axis != axis:
        raise op.error(f"{key} must be quantized per channel along axis {axis} (its output channels), "
                       f"got axis {q.axis}")
    n = len(q.scales)
    if n not in (1, channels):
        raise op.error(f"{key} has {n} quantization scales, expected 1 or {channels} (one per output channel)")
    scales = np.array([_f32(s) for s in q.scales], dtype=np.float64)
    zps = np.array(q.zero_points, dtype=np.int64)
    return res.array().astype(np.int64), np.broadcast_to(scales, (channels,)), np.broadcast_to(zps, (channels,))


def _bias(op: layer.LayerOp, channels: int) -> np.ndarray:
    res = op.get_attr("bias")
    if res is None:
        return np.zeros(channels, dtype=np.int64)
    elem = res.type.elem
    if isinstance(elem, QuantType) or str(elem) != "i32":
        raise op.error(f"int8 {op.name} needs an i32 bias, got {res.type}")
    return res.array().astype(np.int64)


def _requantize_acc(op: layer.LayerOp, acc: np.ndarray, w_scales: np.ndarray) -> np.ndarray:
    """Per-channel output stage of conv/depthwise/dense: multiplier, output offset, fused clamp."""
    s_in, _ = _in_q(op)
    s_out, z_out = _out_q(op)
    mults, shifts = zip(*(quantize_multiplier(s_in * float(ws) / s_out) for ws in w_scales))
    y = mbqm(acc, np.array(mults, dtype=np.int64), np.array(shifts, dtype=np.int64)) + z_out
    lo, hi = activation_range(op.get_attr("activation"), s_out, z_out)
    return _clamp_i8(y, lo, hi)


def _spatial_pads(op: layer.LayerOp, sizes: tuple[int, ...], window: tuple[int, ...],
                  strides: tuple[int, ...], dilation: tuple[int, ...]) -> list[tuple[int, int]]:
    """[before, after] padding per spatial axis: TFLite's (the extra cell of 'same' goes after),
    plus whatever the last window needs."""
    pads = []
    for n, k, s, d in zip(sizes, window, strides, dilation):
        out = layer.conv_out_size(n, k, s, d, op.padding)
        before = layer.same_pad_before(n, k, s, d) if op.padding == "same" else 0
        after = max((out - 1) * s + (k - 1) * d + 1 - n - before, 0)
        pads.append((before, after))
    return pads


def _patches(x: np.ndarray, window: tuple[int, ...], strides: tuple[int, ...], dilation: tuple[int, ...],
             out: tuple[int, ...]) -> np.ndarray:
    """Windows of an already padded [1, *spatial, C] array: [*out, *window, C] (a strided view)."""
    spatial = len(window)
    c = x.shape[-1]
    v = x[0]
    st = v.strides
    shape = (*out, *window, c)
    strides_b = (*(st[i] * strides[i] for i in range(spatial)),
                 *(st[i] * dilation[i] for i in range(spatial)), st[-1])
    return np.lib.stride_tricks.as_strided(v, shape=shape, strides=strides_b, writeable=False)


def _conv(op: layer._ConvBase, x: np.ndarray) -> np.ndarray:
    """ConvPerChannel / DepthwiseConvPerChannel: acc = sum (x - zp_in) * (w - zp_w) + bias."""
    _, z_in = _in_q(op)
    spatial = op.spatial
    window = op.window()
    cout = op.out_channels()
    # Output channels: axis 0 of [O, *window, I], the last axis of depthwise [*window, C*M].
    w, w_scales, w_zps = _weights_q(op, "kernel", cout, spatial if op.depthwise else 0)
    sizes = tuple(x.shape[1:-1])
    pads = _spatial_pads(op, sizes, window, op.strides, op.dilation)
    out = tuple(op.out_type.shape[1:-1])
    # Padding with the input zero point makes padded taps contribute exactly 0, as TFLite skips them.
    xs = np.pad(x.astype(np.int64) - z_in, [(0, 0), *pads, (0, 0)])
    p = _patches(xs, window, op.strides, op.dilation, out).astype(np.float64)
    # float64 sums of int products are exact here (|sum| << 2^53), and much faster than int64 matmul.
    if op.depthwise:
        m = op.get_attr("depth_multiplier")
        wk = (w - w_zps).reshape(*window, cout // m, m).astype(np.float64)
        o, k = "yx"[:spatial], "hw"[:spatial]
        acc = np.einsum(f"{o}{k}c,{k}cm->{o}cm", p, wk, optimize=True).reshape(*out, cout)
    else:
        wk = (w - w_zps.reshape(-1, *([1] * (spatial + 1)))).astype(np.float64)
        k = int(np.prod(window)) * x.shape[-1]
        acc = p.reshape(-1, k) @ wk.reshape(cout, k).T
        acc = acc.reshape(*out, cout)
    acc = np.rint(acc).astype(np.int64) + _bias(op, cout)
    return _requantize_acc(op, acc[None], w_scales)


def _dense(op: layer.Dense, x: np.ndarray) -> np.ndarray:
    """FullyConnected (per-tensor or per-channel): acc = sum (x - zp_in) * (w - zp_w) + bias."""
    _, z_in = _in_q(op)
    cout = op.kernel.type.shape[0]
    w, w_scales, w_zps = _weights_q(op, "kernel", cout, 0)
    xs = (x.astype(np.int64) - z_in).astype(np.float64)
    acc = xs @ (w - w_zps[:, None]).astype(np.float64).T
    acc = np.rint(acc).astype(np.int64) + _bias(op, cout)
    return _requantize_acc(op, acc, w_scales)


# ----------------------------------------------------------------------------- pooling


def _pool_windows(op: layer._PoolBase, x: np.ndarray, fill: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of the input padded with `fill`, and the number of real (unpadded) cells in each."""
    window = tuple(op.pool_size)
    ones = (1,) * len(window)
    pads = _spatial_pads(op, tuple(x.shape[1:-1]), window, op.strides, ones)
    out = tuple(op.out_type.shape[1:-1])
    xp = np.pad(x.astype(np.int64), [(0, 0), *pads, (0, 0)], constant_values=fill)
    valid = np.pad(np.ones((1, *x.shape[1:-1], 1), dtype=np.int64), [(0, 0), *pads, (0, 0)])
    axes = tuple(range(len(out), 2 * len(out)))
    wins = _patches(xp, window, op.strides, ones, out)
    counts = _patches(valid, window, op.strides, ones, out).sum(axis=axes)
    return wins, counts


def _avg_pool(op: layer._PoolBase, x: np.ndarray) -> np.ndarray:
    """reference_integer_ops::AveragePool: sum of valid cells, divided rounding half away from zero."""
    _same_quant(op, "TFLite's int8 AVERAGE_POOL_2D requires equal scales")
    wins, counts = _pool_windows(op, x, 0)
    acc = wins.sum(axis=tuple(range(len(op.pool_size), 2 * len(op.pool_size))))
    half = counts // 2
    # C division truncates toward zero; both branches keep the numerator's sign.
    num = np.where(acc > 0, acc + half, acc - half)
    q = np.where(num >= 0, num // counts, -((-num) // counts))
    return _clamp_i8(q[None])


def _max_pool(op: layer._PoolBase, x: np.ndarray) -> np.ndarray:
    """reference_integer_ops::MaxPool: max over valid cells (padding never wins)."""
    _same_quant(op, "TFLite's int8 MAX_POOL_2D requires equal scales")
    wins, _ = _pool_windows(op, x, I8_MIN - 1)
    return _clamp_i8(wins.max(axis=tuple(range(len(op.pool_size), 2 * len(op.pool_size))))[None])


def _global_avg(op: layer._GlobalPool, x: np.ndarray) -> np.ndarray:
    """TFLite MEAN over the spatial axes (reference_ops::QuantizedMeanOrSum).

    The raw sum is corrected by n * zp_in, then one multiplier carries both in_scale / out_scale and
    1/n: the multiplier is pre-shifted left by floor(log2 n) (at most 32) and integer-divided by n.
    """
    s_in, z_in = _in_q(op)
    s_out, z_out = _out_q(op)
    n = int(np.prod(x.shape[1:-1]))
    mult, shift = quantize_multiplier(s_in / s_out)
    sh = min(n.bit_length() - 1, 32, 31 + shift)
    mult = (mult << sh) // n
    shift -= sh
    total = x.astype(np.int64).sum(axis=tuple(range(1, x.ndim - 1))) - z_in * n
    y = _clamp_i8(mbqm(total, mult, shift) + z_out)
    return y.reshape(op.out_type.shape)


def _global_max(op: layer._GlobalPool, x: np.ndarray) -> np.ndarray:
    """TFLite REDUCE_MAX over the spatial axes (input and result share their quantization)."""
    _same_quant(op, "TFLite's int8 REDUCE_MAX requires equal scales")
    return _i8(x.max(axis=tuple(range(1, x.ndim - 1)))).reshape(op.out_type.shape)


# ----------------------------------------------------------------------------- element-wise


def _relu_x(op: layer.LayerOp, x: np.ndarray, act_max: float | None) -> np.ndarray:
    """QuantizedReluX: requantize by in_scale / out_scale (a float32 quotient), then clamp."""
    s_in, z_in = _in_q(op)
    s_out, z_out = _out_q(op)
    mult, shift = quantize_multiplier(float(np.float32(s_in) / np.float32(s_out)))
    lo = max(I8_MIN, z_out + int(round_half_away(np.float32(0.0) / np.float32(s_out))))
    hi = I8_MAX if act_max is None else min(
        I8_MAX, z_out + int(round_half_away(np.float32(act_max) / np.float32(s_out))))
    y = z_out + mbqm(x.astype(np.int64) - z_in, mult, shift)
    return _clamp_i8(y, lo, hi)


def _leaky_relu(op: layer.LeakyRelu, x: np.ndarray) -> np.ndarray:
    """reference_ops::QuantizeLeakyRelu: separate multipliers for x >= 0 and for alpha * x < 0."""
    s_in, z_in = _in_q(op)
    s_out, z_out = _out_q(op)
    f = np.float32
    m_alpha = quantize_multiplier(float(f(f(s_in) * f(op.alpha)) / f(s_out)))
    m_id = quantize_multiplier(float(f(s_in) / f(s_out)))
    v = x.astype(np.int64) - z_in
    y = np.where(v >= 0, mbqm(v, *m_id), mbqm(v, *m_alpha)) + z_out
    return _clamp_i8(y)


def _lut_op(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[layer.LayerOp, np.ndarray], np.ndarray]:
    """LUTPopulate<int8_t>: a 256-entry table of fn over the dequantized inputs, in float32."""
    def kernel(op: layer.LayerOp, x: np.ndarray) -> np.ndarray:
        s_in, z_in = _in_q(op)
        s_out, z_out = _out_q(op)
        vals = np.arange(I8_MIN, I8_MAX + 1, dtype=np.int32)
        deq = np.float32(s_in) * (vals - z_in).astype(np.float32)
        with np.errstate(over="ignore"):
            t = fn(deq.astype(np.float32)).astype(np.float32)
        rescaled = round_half_away(t * (np.float32(1) / np.float32(s_out)))
        q = (rescaled + np.float32(z_out)).astype(np.int64)
        table = np.clip(q, I8_MIN, I8_MAX).astype(np.int8)
        return table[x.astype(np.int64) - I8_MIN]
    return kernel


def _sigmoid_f32(v: np.ndarray) -> np.ndarray:
    """1.0f / (1.0f + expf(-v)); expf as the correctly rounded float64 exp (glibc's is too)."""
    one = np.float32(1)
    return one / (one + np.exp(-v.astype(np.float64)).astype(np.float32))


def _tanh_f32(v: np.ndarray) -> np.ndarray:
    """tanhf(v), taken as the float64 tanh rounded to float32."""
    return np.tanh(v.astype(np.float64)).astype(np.float32)


def _hard_swish(op: layer.HardSwish, x: np.ndarray) -> np.ndarray:
    """reference_ops::HardSwish: 16-bit fixed point with a 'reluish' multiplier in [0, 1]."""
    s_in, z_in = _in_q(op)
    s_out, z_out = _out_q(op)
    f = np.float32
    hires = f(f(1.0) / f(128.0)) * f(s_in)
    out_m, out_e = quantize_multiplier(float(hires / f(s_out)))
    rel_m, rel_e = quantize_multiplier(float(hires / f(f(3.0) / f(32768.0))))
    if out_e > 0:
        raise op.error("int8 hard_swish is not supported: output scale smaller than input_scale/128")

    def down16(m: int) -> int:  # DownScaleInt32ToInt16Multiplier
        return 32767 if m >= INT32_MAX - (1 << 15) else (m + (1 << 15)) >> 16

    def sat_shl16(v: np.ndarray, amount: int) -> np.ndarray:
        return np.clip(v * (1 << amount), -32768, 32767)

    v = x.astype(np.int64) - z_in
    hires_v = _wrap16(v * 128)
    preshift = _srdhm16(hires_v, down16(out_m))
    r = hires_v
    if rel_e > 0:
        r = sat_shl16(r, rel_e - 1)
    r = _srdhm16(r, down16(rel_m))
    if rel_e > 0:
        r = sat_shl16(r, 1)
    if rel_e < 0:
        r = rdbpot(r, -rel_e)
    r = (r + (1 << 15)) >> 1
    # SaturatingDoublingHighMul: truncating, not rounding (cancels the bias of the rounding above).
    prod = r * preshift
    pre_out = np.where((r == -32768) & (preshift == -32768), 32767, _wrap16(_trunc_div_pot(prod, 15)))
    y = _wrap16(rdbpot(pre_out, -out_e) + z_out)
    return _clamp_i8(y)


# gemmlowp fixed point (int32 raw values): exp on negative values and 1 / (1 + x).

def _exp_quarter_interval(a: np.ndarray) -> np.ndarray:
    """exp(a) for a in [-1/4, 0), Q0.31, by a Taylor series around -1/8."""
    constant_term = 1895147668
    one_third = 715827883
    x = a + (1 << 28)
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    x4_over_4 = rdbpot(x4, 2)
    poly = rdbpot(srdhm(x4_over_4 + x3, one_third) + x2, 1)
    return constant_term + srdhm(constant_term, x + poly)


def exp_on_negative_values(a: np.ndarray, integer_bits: int) -> np.ndarray:
    """gemmlowp::exp_on_negative_values: Q(integer_bits) input <= 0, Q0.31 result."""
    frac = 31 - integer_bits
    quarter = 1 << (frac - 2)
    a_mod = (a & (quarter - 1)) - quarter
    result = _exp_quarter_interval(srmbpot(a_mod, integer_bits))
    remainder = a_mod - a
    for exponent, multiplier in ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
                                 (2, 39332535), (3, 720401), (4, 242)):
        if integer_bits > exponent:
            bit = 1 << (frac + exponent)
            result = np.where(remainder & bit, srdhm(result, multiplier), result)
    if integer_bits > 5:
        result = np.where(a < -(1 << (36 - integer_bits)), 0, result)
    return np.where(a == 0, INT32_MAX, result)


def one_over_one_plus_x(a: np.ndarray) -> np.ndarray:
    """gemmlowp::one_over_one_plus_x_for_x_in_0_1: Newton-Raphson division in Q2.29."""
    s = a.astype(np.int64) + INT32_MAX
    half_denominator = np.where(s >= 0, (s + 1) // 2, -((-(s - 1)) // 2))
    x = 1515870810 + srdhm(half_denominator, -1010580540)
    for _ in range(3):
        one_minus = (1 << 29) - srdhm(half_denominator, x)
        x = x + srmbpot(srdhm(x, one_minus), 2)
    return srmbpot(x, 1)


def _softmax(op: layer.Softmax, x: np.ndarray) -> np.ndarray:
    """reference_ops::Softmax (int8 in, int8 out): gemmlowp exp of the scaled differences to the
    row maximum in Q5.26, their sum in Q12.19, its reciprocal, and a rounding shift to 1/256 steps."""
    s_in, _ = _in_q(op)
    s_out, z_out = _out_q(op)
    if z_out != -128 or abs(s_out - 1 / 256) > 0.001 / 256:
        raise op.error("int8 softmax needs the result quantization 1/256:-128 (as TFLite requires)")
    scaled_bits = 5
    real = min(_f32(op.beta) * s_in * (1 << (31 - scaled_bits)), (1 << 31) - 1.0)
    mult, left_shift = quantize_multiplier(real)
    if left_shift < 0:
        raise op.error("int8 softmax is not supported: beta * input scale is too small")
    radius = math.floor(((1 << scaled_bits) - 1) * (1 << (31 - scaled_bits)) / (1 << left_shift))
    diff_min = -radius

    v = x.astype(np.int64)
    diff = v - v.max(axis=-1, keepdims=True)
    valid = diff >= diff_min
    scaled = srdhm(diff * (1 << left_shift), mult)
    exp = exp_on_negative_values(scaled, scaled_bits)
    sum_of_exps = np.where(valid, rdbpot(exp, 12), 0).sum(axis=-1, keepdims=True)
    # GetReciprocal(sum, 12): normalise the sum to [1, 2) and take 1 / (1 + x) of the fraction.
    headroom = 32 - np.frexp(sum_of_exps.astype(np.float64))[1].astype(np.int64)  # clz of a uint32
    num_bits_over_unit = 12 - headroom
    shifted = ((sum_of_exps << headroom) & 0xFFFFFFFF) - (1 << 31)
    shifted_scale = one_over_one_plus_x(shifted)
    exponent = num_bits_over_unit + 31 - 8
    out = rdbpot(srdhm(shifted_scale, exp), exponent) + I8_MIN
    return np.where(valid, np.clip(out, I8_MIN, I8_MAX), I8_MIN).astype(np.int8)


# ----------------------------------------------------------------------------- binary ops


def _two_operands(op: layer.LayerOp, xs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    if len(xs) != 2:
        raise op.error(f"int8 {op.name} is not supported with {len(xs)} operands (TFLite's is binary)")
    return xs[0], xs[1]


def _add_sub(op: layer.LayerOp, *xs: np.ndarray) -> np.ndarray:
    """reference_integer_ops::Add (Sub subtracts the scaled second input): both inputs are shifted
    left by 20 bits, rescaled to twice the larger input scale, summed and rescaled to the output."""
    a, b = _two_operands(op, xs)
    s1, z1 = _in_q(op, 0)
    s2, z2 = _in_q(op, 1)
    s_out, z_out = _out_q(op)
    left_shift = 20
    twice_max = 2.0 * max(s1, s2)
    m1 = quantize_multiplier(s1 / twice_max)
    m2 = quantize_multiplier(s2 / twice_max)
    mo = quantize_multiplier(twice_max / ((1 << left_shift) * s_out))
    x1 = rdbpot(srdhm((a.astype(np.int64) - z1) << left_shift, m1[0]), -m1[1])
    x2 = rdbpot(srdhm((b.astype(np.int64) - z2) << left_shift, m2[0]), -m2[1])
    raw = x1 + x2 if isinstance(op, layer.Add) else x1 - x2
    y = rdbpot(srdhm(raw, mo[0]), -mo[1]) + z_out
    lo, hi = activation_range(op.activation, s_out, z_out)
    return _clamp_i8(y, lo, hi)


def _mul(op: layer.Mul, *xs: np.ndarray) -> np.ndarray:
    """reference_integer_ops::Mul: (a - zp_a) * (b - zp_b) requantized by s_a * s_b / s_out."""
    a, b = _two_operands(op, xs)
    s1, z1 = _in_q(op, 0)
    s2, z2 = _in_q(op, 1)
    s_out, z_out = _out_q(op)
    mult, shift = quantize_multiplier(s1 * s2 / s_out)
    prod = (a.astype(np.int64) - z1) * (b.astype(np.int64) - z2)
    y = mbqm(prod, mult, shift) + z_out
    lo, hi = activation_range(op.activation, s_out, z_out)
    return _clamp_i8(y, lo, hi)


# ----------------------------------------------------------------------------- data movement


def _requantize(x: np.ndarray, src: tuple[float, int], dst: tuple[float, int]) -> np.ndarray:
    """TFLite's int8 -> int8 QUANTIZE (Requantize): one multiplier in_scale / out_scale."""
    if src == dst:
        return np.asarray(x).astype(np.int8)
    mult, shift = quantize_multiplier(src[0] / dst[0])
    return _clamp_i8(mbqm(x.astype(np.int64) - src[1], mult, shift) + dst[1])


def _concat(op: layer.Concat, *xs: np.ndarray) -> np.ndarray:
    """CONCATENATION; an input quantized differently from the result is first requantized as
    layer.quantize would (TFLite's converter gives all of them the result's quantization)."""
    dst = _out_q(op)
    parts = [_requantize(x, _in_q(op, i), dst) for i, x in enumerate(xs)]
    return np.concatenate(parts, axis=op.norm_axis())


def _zero_pad(op: layer.ZeroPad, x: np.ndarray) -> np.ndarray:
    """PAD: the padding holds the zero point, i.e. the real value 0."""
    _, z = _same_quant(op, "pad it after a layer.quantize")
    return np.pad(x, [tuple(p) for p in op.pads], constant_values=z).astype(np.int8)


def _reshape(op: layer.LayerOp, x: np.ndarray) -> np.ndarray:
    """RESHAPE: the same int8 codes in a new shape."""
    _same_quant(op, "reshape/flatten do not change values")
    return np.asarray(x).reshape(op.out_type.shape).astype(np.int8)


def _identity(op: layer.LayerOp, x: np.ndarray) -> np.ndarray:
    """Dropout at inference: the input unchanged."""
    _same_quant(op, "dropout does not change values")
    return np.asarray(x).astype(np.int8)


def _cropping(op: layer.Cropping, x: np.ndarray) -> np.ndarray:
    """STRIDED_SLICE of the spatial axes: the kept codes unchanged."""
    _same_quant(op, "cropping does not change values")
    idx = (slice(None), *(slice(a, n - b) for n, (a, b) in zip(x.shape[1:-1], op.crops)), slice(None))
    return np.asarray(x)[idx].astype(np.int8)


def _upsample(op: layer.Upsample, x: np.ndarray) -> np.ndarray:
    """RESIZE_NEAREST_NEIGHBOR by integer factors: repeats values."""
    _same_quant(op, "nearest upsampling does not change values")
    for axis, f in enumerate(op.size, start=1):
        x = np.repeat(x, f, axis=axis)
    return x.astype(np.int8)


def _quantize(op: layer.Quantize, x: np.ndarray) -> np.ndarray:
    """QUANTIZE: f32 -> int8 as round(x / scale) + zp (division in double, halves away from zero),
    or int8 -> int8 requantization."""
    dst = _out_q(op)
    src_t = op.in_type
    if src_t.quant is not None:
        return _requantize(x, _in_q(op), dst)
    if str(src_t.elem) != "f32":
        raise op.error(f"int8 layer.quantize is not supported from {src_t.elem}")
    q = round_half_away(x.astype(np.float64) / dst[0])
    return _clamp_i8(q.astype(np.int64) + dst[1])


def _dequantize(op: layer.Dequantize, x: np.ndarray) -> np.ndarray:
    """DEQUANTIZE: float32(scale * (q - zp)) (the product is exact in double, rounded once)."""
    s, z = _in_q(op)
    return (s * (x.astype(np.float64) - z)).astype(np.float32)


# ----------------------------------------------------------------------------- dispatch


KERNELS: dict[type, Callable[..., np.ndarray]] = {
    layer.Conv2D: _conv,
    layer.Conv1D: _conv,
    layer.DepthwiseConv2D: _conv,
    layer.DepthwiseConv1D: _conv,
    layer.Dense: _dense,
    layer.AvgPool2D: _avg_pool,
    layer.AvgPool1D: _avg_pool,
    layer.MaxPool2D: _max_pool,
    layer.MaxPool1D: _max_pool,
    layer.GlobalAvgPool: _global_avg,
    layer.GlobalMaxPool: _global_max,
    layer.Relu: lambda op, x: _relu_x(op, x, None),
    layer.Relu6: lambda op, x: _relu_x(op, x, 6.0),
    layer.LeakyRelu: _leaky_relu,
    layer.Sigmoid: _lut_op(_sigmoid_f32),
    layer.Tanh: _lut_op(_tanh_f32),
    layer.HardSwish: _hard_swish,
    layer.Softmax: _softmax,
    layer.Add: _add_sub,
    layer.Sub: _add_sub,
    layer.Mul: _mul,
    layer.Concat: _concat,
    layer.ZeroPad: _zero_pad,
    layer.Cropping: _cropping,
    layer.Upsample: _upsample,
    layer.Reshape: _reshape,
    layer.Flatten: _reshape,
    layer.Dropout: _identity,
    layer.Quantize: _quantize,
    layer.Dequantize: _dequantize,
}


def reference(op: layer.LayerOp, *inputs: np.ndarray) -> np.ndarray:
    """Run one int8 layer op bit-exactly as TFLite's reference kernels; np.int8 out (f32 for
    layer.dequantize). Ops without an int8 kernel raise a located CompileError."""
    kernel = KERNELS.get(type(op))
    if kernel is None:
        raise op.error(f"int8 {op.name} is not supported"
                       + ("; fold it into the previous conv/dense first" if isinstance(op, layer.BatchNorm)
                          else ""))
    for i, (v, x) in enumerate(zip(op.operands, inputs)):
        t = v.type
        if isinstance(t, TensorType) and t.quant is not None and np.asarray(x).dtype != np.int8:
            raise op.error(f"operand #{i} must be an int8 array for {t}, got {np.asarray(x).dtype}")
    return kernel(op, *[np.asarray(x) for x in inputs])
