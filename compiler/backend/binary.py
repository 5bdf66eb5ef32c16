"""ML4F binaries (DESIGN §5): the header, code, weights and optional test vectors, and their C/asm forms.

Layout (little-endian 32-bit words; Microsoft ML4F's header, so its loaders run float32 models):

    0x00 magic0 0x30470f62        0x20 input_offset (in the arena)
    0x04 magic1 0x46344c4d "ML4F" 0x24 input_type  1 = float32, 2 = int8
    0x08 header_size = entry      0x28 output_offset
    0x0C object_size              0x2C output_type
    0x10 weights_offset (4-aligned)  0x30..0x3C reserved[4]: 0, or for int8 I/O the input scale
    0x14 test_input_offset or 0               (f32 bits), input zero point, output scale, output zero point
    0x18 test_output_offset or 0  0x40.. input dims (no batch), 0, output dims, 0
    0x1C arena_bytes

The code follows the shapes (entry = binary + header_size, called with the Thumb bit set), then zero
padding to 4, the weights, and the test input and output (each 4-aligned, in the I/O types).

    b = build_binary(code, weights, arena_bytes=1024, input=IOSpec(0, TYPE_F32, (4,)),
                     output=IOSpec(16, TYPE_F32, (2,)))
    data = b.to_bytes(); assert read_binary(data) == b
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ml4f.compiler.diagnostics import CompileError, Loc

MAGIC0 = 0x30470F62
MAGIC1 = 0x46344C4D            # "ML4F"
TYPE_F32 = 1
TYPE_INT8 = 2
FIXED_HEADER_BYTES = 0x40
TYPE_NAMES = {TYPE_F32: "f32", TYPE_INT8: "int8"}
_DTYPES = {TYPE_F32: np.dtype("<f4"), TYPE_INT8: np.dtype("i1")}


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def _bits_f32(w: int) -> float:
    return struct.unpack("<f", struct.pack("<I", w))[0]


@dataclass(frozen=True)
class IOSpec:
    """One model input or output: where it sits in the arena, its element type and shape (no batch).

    `scale`/`zero_point` are the int8 affine quantization (real = scale * (q - zero_point)).
    """

    offset: int
    type: int
    shape: tuple[int, ...]
    scale: float = 0.0
    zero_point: int = 0

    @property
    def dtype(self) -> np.dtype:
        return _DTYPES[self.type]

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.elements * self.dtype.itemsize


def header_size_for(input_shape: Sequence[int], output_shape: Sequence[int]) -> int:
    """Bytes of the header with these shapes: where the entry code starts."""
    return FIXED_HEADER_BYTES + 4 * (len(input_shape) + len(output_shape) + 2)


def weights_offset_for(input_shape: Sequence[int], output_shape: Sequence[int], code_bytes: int) -> int:
    """Offset of the weights from the start of the binary, for `code_bytes` of code."""
    return _align4(header_size_for(input_shape, output_shape) + code_bytes)


@dataclass(frozen=True)
class Header:
    """The parsed header of an ML4F binary."""

    header_size: int
    object_size: int
    weights_offset: int
    test_input_offset: int
    test_output_offset: int
    arena_bytes: int
    input: IOSpec
    output: IOSpec

    @property
    def entry_offset(self) -> int:
        return self.header_size

    def pack(self) -> bytes:
        """The header bytes (fixed part and shapes)."""
        reserved = [0, 0, 0, 0]
        if TYPE_INT8 in (self.input.type, self.output.type):
            reserved = [_f32_bits(self.input.scale), self.input.zero_point & 0xFFFF_FFFF,
                        _f32_bits(self.output.scale), self.output.zero_point & 0xFFFF_FFFF]
        words = [MAGIC0, MAGIC1, self.header_size, self.object_size, self.weights_offset,
                 self.test_input_offset, self.test_output_offset, self.arena_bytes,
                 self.input.offset, self.input.type, self.output.offset, self.output.type, *reserved,
                 *self.input.shape, 0, *self.output.shape, 0]
        return struct.pack(f"<{len(words)}I", *words)

    @staticmethod
    def unpack(data: bytes, where: str = "<binary>") -> Header:
        """Parse and check a header; a malformed one raises a CompileError naming `where`."""
        loc = Loc(where)

        def fail(msg: str) -> CompileError:
            return CompileError(f"not a valid ML4F binary: {msg}", loc)

        if len(data) < FIXED_HEADER_BYTES + 8:
            raise fail(f"{len(data)} bytes is shorter than the header")
        w = struct.unpack_from("<16I", data)
        if w[0] != MAGIC0 or w[1] != MAGIC1:
            raise fail(f"bad magic {w[0]:#010x} {w[1]:#010x} (expected {MAGIC0:#010x} {MAGIC1:#010x})")
        header_size, object_size, weights_offset, t_in, t_out, arena, in_off, in_type, out_off, out_type = w[2:12]
        if header_size % 4 or not FIXED_HEADER_BYTES + 8 <= header_size <= len(data):
            raise fail(f"header_size {header_size} is not a multiple of 4 within the file")
        if object_size > len(data) or object_size < header_size:
            raise fail(f"object_size {object_size} does not fit the file of {len(data)} bytes")
        if weights_offset % 4 or not header_size <= weights_offset <= object_size:
            raise fail(f"weights_offset {weights_offset} is not 4-aligned within the object")
        for name, t in (("input_type", in_type), ("output_type", out_type)):
            if t not in TYPE_NAMES:
                raise fail(f"{name} {t} is neither 1 (float32) nor 2 (int8)")
        shape_words = struct.unpack_from(f"<{(header_size - FIXED_HEADER_BYTES) // 4}I", data,
                                         FIXED_HEADER_BYTES)
        shapes: list[tuple[int, ...]] = []
        dims: list[int] = []
        for v in shape_words:
            if v == 0:
                shapes.append(tuple(dims))
                dims = []
                if len(shapes) == 2:
                    break
            else:
                dims.append(v)
        if len(shapes) != 2 or not shapes[0] or not shapes[1]:
            raise fail("the input and output shapes are not two non-empty 0-terminated lists in the header")
        int8 = TYPE_INT8 in (in_type, out_type)
        scale_in, zp_in, scale_out, zp_out = (
            _bits_f32(w[12]), _signed(w[13]), _bits_f32(w[14]), _signed(w[15])) if int8 else (0.0, 0, 0.0, 0)
        inp = IOSpec(in_off, in_type, shapes[0], scale_in if in_type == TYPE_INT8 else 0.0,
                     zp_in if in_type == TYPE_INT8 else 0)
        out = IOSpec(out_off, out_type, shapes[1], scale_out if out_type == TYPE_INT8 else 0.0,
                     zp_out if out_type == TYPE_INT8 else 0)
        for name, io in (("input", inp), ("output", out)):
            if io.offset + io.nbytes > arena:
                raise fail(f"the {name} ({io.nbytes} bytes at {io.offset}) lies outside the "
                           f"{arena}-byte arena")
        for name, off, io in (("test input", t_in, inp), ("test output", t_out, out)):
            if off and (off % 4 or off < weights_offset or off + io.nbytes > object_size):
                raise fail(f"the {name} at {off} lies outside the object")
        return Header(header_size, object_size, weights_offset, t_in, t_out, arena, inp, out)


def _signed(w: int) -> int:
    return w - (1 << 32) if w & 0x8000_0000 else w


@dataclass(frozen=True)
class Binary:
    """A complete binary: header, code, weights and optional test vectors (raw bytes in I/O types)."""

    header: Header
    code: bytes
    weights: bytes
    test_input: bytes | None = None
    test_output: bytes | None = None

    def to_bytes(self) -> bytes:
        h = self.header
        out = bytearray(h.pack())
        assert len(out) == h.header_size
        out += self.code
        out += bytes(h.weights_offset - len(out))
        out += self.weights
        for off, data in ((h.test_input_offset, self.test_input), (h.test_output_offset, self.test_output)):
            if data is not None:
                out += bytes(off - len(out))
                out += data
        out += bytes(h.object_size - len(out))
        assert len(out) == h.object_size
        return bytes(out)


def build_binary(code: bytes, weights: bytes, *, arena_bytes: int, input: IOSpec, output: IOSpec,
                 test_input: np.ndarray | None = None, test_output: np.ndarray | None = None) -> Binary:
    """Lay out a binary: header, `code` (its entry at header_size), weights 4-aligned, test vectors.

    The code must expect its weights at `weights_offset_for(input.shape, output.shape, len(code))`
    from the model pointer (or read the offset from the header word at 0x10).
    """
    if len(code) % 2:
        raise ValueError("Thumb code has an even number of bytes")
    for name, io in (("input", input), ("output", output)):
        if not io.shape or min(io.shape) <= 0:
            raise ValueError(f"the {name} shape {io.shape} must have positive dimensions")
        if io.offset % 4 or io.offset + io.nbytes > arena_bytes:
            raise ValueError(f"the {name} must be 4-aligned inside the arena")
    header_size = header_size_for(input.shape, output.shape)
    weights_offset = weights_offset_for(input.shape, output.shape, len(code))
    end = _align4(weights_offset + len(weights))
    vectors: list[bytes | None] = []
    offsets = []
    for data, io in ((test_input, input), (test_output, output)):
        if data is None:
            vectors.append(None)
            offsets.append(0)
            continue
        raw = np.asarray(data).astype(io.dtype).reshape(-1).tobytes()
        if len(raw) != io.nbytes:
            raise ValueError(f"a test vector has {len(raw)} bytes; the tensor has {io.nbytes}")
        vectors.append(raw)
        offsets.append(end)
        end = _align4(end + len(raw))
    header = Header(header_size, end, weights_offset, offsets[0], offsets[1], arena_bytes, input, output)
    # code and weights are kept padded to words, so that a binary read back compares equal
    return Binary(header, bytes(code) + bytes(-len(code) % 4), bytes(weights) + bytes(-len(weights) % 4),
                  vectors[0], vectors[1])


def read_binary(data: bytes, where: str = "<binary>") -> Binary:
    """Parse a binary written by `Binary.to_bytes` (or Microsoft ML4F) back into its parts."""
    h = Header.unpack(data, where)
    ends = sorted(o for o in (h.test_input_offset, h.test_output_offset, h.object_size) if o)
    weights_end = ends[0]
    code = bytes(data[h.header_size:h.weights_offset])
    t_in = bytes(data[h.test_input_offset:h.test_input_offset + h.input.nbytes]) if h.test_input_offset else None
    t_out = bytes(data[h.test_output_offset:h.test_output_offset + h.output.nbytes]) \
        if h.test_output_offset else None
    return Binary(h, code, bytes(data[h.weights_offset:weights_end]), t_in, t_out)


# -- the .h and .s outputs -----------------------------------------------------------------------------


def c_array(data: bytes, name: str = "model") -> str:
    """The binary as a C header: a word-aligned `const uint8_t name[]` plus its length."""
    guard = f"{name.upper()}_H"
    lines = [f"#ifndef {guard}", f"#define {guard}", "", "#include <stdint.h>", "",
             "// ML4F binary: call (model + header_size) with the Thumb bit set, as entry(model, arena).",
             f"__attribute__((aligned(4))) const uint8_t {name}[{len(data)}] = {{"]
    for i in range(0, len(data), 16):
        lines.append("    " + " ".join(f"0x{b:02x}," for b in data[i:i + 16]))
    lines += ["};", f"const uint32_t {name}_len = {len(data)};", "", f"#endif  // {guard}", ""]
    return "\n".join(lines)


def _words(data: bytes) -> list[str]:
    """`.word`/`.byte` directives holding `data` exactly."""
    out = []
    full = len(data) // 4 * 4
    for i in range(0, full, 16):
        chunk = struct.unpack_from(f"<{min(16, full - i) // 4}I", data, i)
        out.append("    .word " + ", ".join(f"0x{w:08x}" for w in chunk))
    if full < len(data):
        out.append("    .byte " + ", ".join(f"0x{b:02x}" for b in data[full:]))
    return out


def assembly_file(binary: Binary, code_text: str) -> str:
    """The `.s` output: the header words (commented), `code_text` (GNU unified syntax assembling to
    `binary.code`), the weights and test vectors as data. Assembling it (GNU as + `objcopy -O binary`,
    or `ml4f-as`) gives back `binary.to_bytes()`.
    """
    h = binary.header
    reserved = struct.unpack_from("<4I", h.pack(), 0x30)
    fields = [(MAGIC0, "magic0"), (MAGIC1, 'magic1 "ML4F"'), (h.header_size, "header_size: the entry"),
              (h.object_size, "object_size"), (h.weights_offset, "weights_offset"),
              (h.test_input_offset, "test_input_offset"), (h.test_output_offset, "test_output_offset"),
              (h.arena_bytes, "arena_bytes"), (h.input.offset, "input_offset"),
              (h.input.type, f"input_type ({TYPE_NAMES[h.input.type]})"), (h.output.offset, "output_offset"),
              (h.output.type, f"output_type ({TYPE_NAMES[h.output.type]})")]
    lines = ["    .syntax unified", "    .thumb", "    .text", "_header:"]
    lines += [f"    .word 0x{v:08x}  // {what}" for v, what in fields]
    lines.append("    .word " + ", ".join(f"0x{w:08x}" for w in reserved) + "  // reserved (int8 quantization)")
    lines.append("    .word " + ", ".join(str(d) for d in (*h.input.shape, 0)) + "  // input shape")
    lines.append("    .word " + ", ".join(str(d) for d in (*h.output.shape, 0)) + "  // output shape")
    lines += ["_start_model:", code_text.strip("\n"), "    .balign 4, 0", "_weights:"]
    lines += _words(binary.weights)
    for label, data in (("_test_input", binary.test_input), ("_test_output", binary.test_output)):
        if data is not None:
            lines += ["    .balign 4, 0", f"{label}:", *_words(data)]
    lines += ["    .balign 4, 0", "_end:", ""]
    return "\n".join(lines)
