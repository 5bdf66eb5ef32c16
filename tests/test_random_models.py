"""Seeded random models through the whole compile: every one must compile and validate.

The code generator picks tile shapes, peels, unrolls, channel-major layouts, VLDM runs and register
splits from the shapes it is given; the real models exercise only the shapes they have. Here each
seed builds a chain of one to four layers (convolutions 1-D and 2-D with any kernel, stride,
dilation and padding, depthwise convolutions with a multiplier, poolings, activations fused or
not, batch norms, residual adds, concatenations, squeeze-and-excite gates, padding, cropping,
upsampling, a dense head) and compiles it with validation on:
the binary runs in the emulator and must match the layer references (DESIGN §7) on random inputs.
A seed that fails names the model in its message, so it can be rebuilt and debugged alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import pytest

from ml4f.compiler.builder import ModelBuilder
from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.ir import Module, Value
from ml4f.compiler.pipeline import Options, compile_model
from ml4f.dialects import layer as L

SEEDS = range(64)


def _out_len(n: int, k: int, stride: int, dilation: int, padding: str) -> int:
    span = dilation * (k - 1) + 1
    if padding == "same":
        return -(-n // stride)
    return (n - span) // stride + 1 if n >= span else 0


class RandomModel:
    """A random chain of layers from one seed; `steps` describes it for failure messages."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)
        self.rng = np.random.default_rng(seed)
        self.b = ModelBuilder(f"random{seed}")
        self.steps: list[str] = []
        self.float16 = self.r.random() < 0.4
        self.optimize = "size" if seed % 5 == 4 else "speed"

    def w(self, *shape: int, positive: bool = False) -> object:
        data = self.rng.uniform(0.5, 1.5, shape) if positive else self.rng.normal(0, 0.5, shape)
        return self.b.weights(f"w{len(self.b.names)}", data.astype(np.float32))

    def build(self) -> Module:
        r = self.r
        if r.random() < 0.7:
            shape = (1, r.randint(1, 20), r.randint(1, 20), r.choice([1, 2, 3, 4, 8, 16, 17, 32, 64]))
        else:
            shape = (1, r.randint(1, 60), r.choice([1, 2, 3, 4, 6, 8, 16, 20]))
        self.steps.append(f"input {shape}")
        x = self.b.input(shape)
        for i in range(r.randint(1, 4)):
            x = r.choice(self.LAYERS)(self, x, i)
        if r.random() < 0.5 and x.type.size <= 4096:
            x = self.dense_head(x)
        self.b.output(x)
        return self.b.finish()

    def activation(self) -> dict[str, str]:
        act = self.r.choice([None, None, "relu", "relu6"])
        return {"activation": act} if act else {}

    def window(self, x: Value, pool: bool = False) -> tuple[list[int], dict[str, object]] | None:
        r, spatial = self.r, x.type.shape[1:-1]
        k = [r.choice([1, 1, 2, 3, 3, 5]) for _ in spatial]
        s = [r.choice([1, 1, 2]) for _ in spatial]
        d = [2] * len(spatial) if not pool and r.random() < 0.1 else [1] * len(spatial)
        if d[0] == 2:
            s = [1] * len(spatial)
        padding = r.choice(["valid", "same"])
        if any(_out_len(n, *a, padding) < 1 for n, *a in zip(spatial, k, s, d)):
            return None
        attrs: dict[str, object] = {"strides": s, "padding": padding}
        if d[0] != 1:
            attrs["dilation"] = d
        return k, attrs

    def conv(self, x: Value, i: int) -> Value:
        win = self.window(x)
        if win is None:
            return x
        k, attrs = win
        cin, cout = x.type.shape[-1], self.r.choice([1, 2, 3, 4, 5, 7, 8, 12, 16, 20, 32, 40, 64])
        cls = L.Conv2D if len(k) == 2 else L.Conv1D
        if self.r.random() < 0.8:
            attrs["bias"] = self.w(cout)
        attrs.update(self.activation())
        self.steps.append(f"{cls.__name__} k{k} {cin}->{cout} {attrs.get('strides')} "
                          f"{attrs['padding']} dil {attrs.get('dilation', 1)} {attrs.get('activation')}")
        return self.b.add(cls, x, name=f"conv{i}", kernel=self.w(cout, *k, cin), **attrs)

    def depthwise(self, x: Value, i: int) -> Value:
        win = self.window(x)
        if win is None:
            return x
        k, attrs = win
        c, m = x.type.shape[-1], self.r.choice([1, 1, 1, 2])
        cls = L.DepthwiseConv2D if len(k) == 2 else L.DepthwiseConv1D
        attrs.update(self.activation())
        self.steps.append(f"{cls.__name__} k{k} {c}x{m} {attrs.get('strides')} {attrs['padding']} "
                          f"dil {attrs.get('dilation', 1)} {attrs.get('activation')}")
        return self.b.add(cls, x, name=f"dw{i}", kernel=self.w(*k, c * m), bias=self.w(c * m),
                          depth_multiplier=m, **attrs)

    def pool(self, x: Value, i: int) -> Value:
        win = self.window(x, pool=True)
        if win is None:
            return x
        k, attrs = win
        two_d = len(k) == 2
        cls = self.r.choice([L.MaxPool2D, L.AvgPool2D] if two_d else [L.MaxPool1D, L.AvgPool1D])
        self.steps.append(f"{cls.__name__} {k} {attrs['strides']} {attrs['padding']}")
        return self.b.add(cls, x, name=f"pool{i}", pool_size=k, **attrs)

    def unary(self, x: Value, i: int) -> Value:
        cls = self.r.choice([L.Relu, L.Relu6, L.Sigmoid, L.Tanh, L.HardSwish, L.LeakyRelu])
        attrs = {"alpha": self.r.choice([0.2, 1.5])} if cls is L.LeakyRelu else {}
        self.steps.append(f"{cls.__name__} {attrs.get('alpha', '')}")
        return self.b.add(cls, x, name=f"act{i}", **attrs)

    def squeeze_excite(self, x: Value, i: int) -> Value:
        pool = self.r.choice([L.GlobalAvgPool, L.GlobalMaxPool])
        op = self.r.choice([L.Mul, L.Add, L.Sub])
        self.steps.append(f"x {op.__name__} sigmoid({pool.__name__}(x))")
        g = self.b.add(L.Sigmoid, self.b.add(pool, x, name=f"g{i}", keepdims=True), name=f"gs{i}")
        return self.b.add(op, x, g, name=f"se{i}")

    def reshape(self, x: Value, i: int) -> Value:
        r, spatial = self.r, x.type.shape[1:-1]
        kind = r.choice(["pad", "crop", "upsample"])
        if kind == "pad":
            pads = [[0, 0], *([r.randint(0, 2), r.randint(0, 2)] for _ in spatial), [0, 0]]
            self.steps.append(f"ZeroPad {pads}")
            return self.b.add(L.ZeroPad, x, name=f"pad{i}", pads=pads)
        if kind == "crop":
            crops = [[r.randint(0, 1), r.randint(0, 1)] for _ in spatial]
            if any(a + b >= n for (a, b), n in zip(crops, spatial)):
                return x
            self.steps.append(f"Cropping {crops}")
            return self.b.add(L.Cropping, x, name=f"crop{i}", crops=crops)
        if any(n > 10 for n in spatial):
            return x
        size = [r.choice([1, 2]) for _ in spatial]
        self.steps.append(f"Upsample {size}")
        return self.b.add(L.Upsample, x, name=f"up{i}", size=size)

    def batch_norm(self, x: Value, i: int) -> Value:
        c = x.type.shape[-1]
        self.steps.append("BatchNorm")
        return self.b.add(L.BatchNorm, x, name=f"bn{i}", gamma=self.w(c), beta=self.w(c), mean=self.w(c),
                          variance=self.w(c, positive=True), epsilon=0.001)

    def residual(self, x: Value, i: int) -> Value:
        c, spatial = x.type.shape[-1], x.type.shape[1:-1]
        k = [self.r.choice([1, 3]) for _ in spatial]
        cls = L.Conv2D if len(spatial) == 2 else L.Conv1D
        self.steps.append(f"x + {cls.__name__} k{k} 'same'")
        y = self.b.add(cls, x, name=f"res{i}", kernel=self.w(c, *k, c), bias=self.w(c), padding="same")
        return self.b.add(L.Add, x, y, name=f"add{i}", **self.activation())

    def concat(self, x: Value, i: int) -> Value:
        c, spatial = x.type.shape[-1], x.type.shape[1:-1]
        extra = self.r.choice([1, 3, 4, 8])
        cls = L.Conv2D if len(spatial) == 2 else L.Conv1D
        self.steps.append(f"concat(x, 1x1 {cls.__name__} ->{extra})")
        y = self.b.add(cls, x, name=f"cat_conv{i}", kernel=self.w(extra, *[1] * len(spatial), c),
                       bias=self.w(extra))
        return self.b.add(L.Concat, x, y, name=f"cat{i}", axis=-1)

    def dense_head(self, x: Value) -> Value:
        x = self.b.add(L.Flatten, x, name="flatten")
        n, units = x.type.shape[-1], self.r.choice([1, 2, 3, 4, 5, 8, 10, 16, 17, 32, 33])
        relu = {"activation": "relu"} if self.r.random() < 0.3 else {}
        self.steps.append(f"Dense {n}->{units} {relu.get('activation')}")
        x = self.b.add(L.Dense, x, name="fc", kernel=self.w(units, n), bias=self.w(units), **relu)
        if self.r.random() < 0.3:
            self.steps.append("Softmax")
            x = self.b.add(L.Softmax, x, name="softmax")
        return x

    LAYERS: ClassVar[tuple[Callable[[RandomModel, Value, int], Value], ...]] = (
        conv, conv, conv, depthwise, depthwise, pool, unary, unary, batch_norm, residual, concat,
        squeeze_excite, reshape)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_model_compiles_and_validates(seed: int) -> None:
    model = RandomModel(seed)
    module = model.build()
    what = f"{' | '.join(model.steps)} ({'f16' if model.float16 else 'f32'}, optimize {model.optimize})"
    try:
        result = compile_model(module, Options(float16=model.float16, optimize=model.optimize,
                                               validation_samples=2))
    except CompileError as e:
        pytest.fail(f"{what}: {e}")
    assert result.validation is not None and result.validation["passed"], what
