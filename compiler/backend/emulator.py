"""Run Thumb-2 code like a Cortex-M4F: unicorn 2 plus the cycle model of cycles.py.

Only three regions are mapped: the binary (read + execute, never writable), the arena (read +
write) and a bounded stack (read + write). Unicorn maps whole 4 KiB pages, so the arena is placed
to end on a page boundary and the unused bytes of its pages (and of the binary's last page) are
watched by memory hooks limited to those bytes: any access outside the three regions stops the run
with a `CompileError` that names the address and the instruction. Every run is thus also a proof of
memory safety for the inputs it ran on.

The code is called as `entry(model, arena)` (AAPCS: r0 = the binary's address, r1 = the arena) with
lr pointing at an unmapped return address at which the run stops. Afterwards the callee-saved
registers (r4-r11, s16-s31, sp) are compared with the values they were given.

    emu = Emulator(image, arena_bytes=1024)
    result = emu.call(entry=0x48, arena=arena)       # result.arena, .cycles, .instructions, ...
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from unicorn import (
    UC_ARCH_ARM,
    UC_HOOK_BLOCK,
    UC_HOOK_MEM_INVALID,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_WRITE,
    UC_MEM_FETCH,
    UC_MEM_FETCH_PROT,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_READ,
    UC_MEM_READ_PROT,
    UC_MEM_READ_UNMAPPED,
    UC_MEM_WRITE,
    UC_MEM_WRITE_PROT,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_THUMB,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
    UcError,
)
from unicorn import arm_const as A

from ml4f.compiler.backend.cycles import CycleModel, RangeStats
from ml4f.compiler.backend.decode import Insn, Kind, decode
from ml4f.compiler.diagnostics import CompileError, Loc

PAGE = 0x1000
CODE_BASE = 0x0800_0000        # where flash sits on most Cortex-M4 parts
ARENA_BASE = 0x2000_0000       # SRAM
STACK_TOP = 0x3000_0000        # the stack grows down from here; nothing is mapped below it
RETURN_ADDRESS = 0x0F00_0000   # unmapped: reaching it ends the run
STACK_FILL = 0xA5              # stack pattern for the high-water mark
DEFAULT_STACK_BYTES = 16 * 1024
DEFAULT_MAX_BLOCKS = 200_000_000
# ARMv7-M A3.2.1: these always fault (UsageFault) on an address that is not word aligned, whatever
# CCR.UNALIGN_TRP says; unicorn executes them anyway, so the optional alignment check looks for them.
_WORD_ALIGNED_KINDS = (Kind.DUAL, Kind.MULTI, Kind.FP_LOAD, Kind.FP_STORE, Kind.FP_MULTI)
_EXCLUSIVE = ("ldrex", "strex")

_CALLEE_SAVED_CORE = [getattr(A, f"UC_ARM_REG_R{i}") for i in range(4, 12)]
_CALLEE_SAVED_FP = [getattr(A, f"UC_ARM_REG_S{i}") for i in range(16, 32)]
_SCRATCH_FP = [getattr(A, f"UC_ARM_REG_S{i}") for i in range(16)]

_ACCESS = {UC_MEM_READ: "read", UC_MEM_WRITE: "write", UC_MEM_FETCH: "fetch",
           UC_MEM_READ_UNMAPPED: "read", UC_MEM_WRITE_UNMAPPED: "write", UC_MEM_FETCH_UNMAPPED: "fetch",
           UC_MEM_READ_PROT: "read", UC_MEM_WRITE_PROT: "write", UC_MEM_FETCH_PROT: "fetch"}


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


@dataclass
class RunResult:
    """What one call computed and cost: the arena afterwards and the run statistics."""

    arena: bytes
    cycles: int
    instructions: int
    stack_bytes: int
    blocks: int
    ranges: dict[str, RangeStats] = field(default_factory=dict)


@dataclass
class _Fault:
    access: str
    address: int
    size: int
    pc: int
    aligned: bool = False     # True: the access needed word alignment


class Emulator:
    """A Cortex-M4F with one binary image, an arena of `arena_bytes` and a stack of `stack_bytes`.

    `ranges` are (label, start, end) offsets into the image used to split cycles (one per layer);
    `where` names the binary in error messages. Decoded blocks are cached across calls.
    `check_alignment` also stops at LDRD/STRD/LDM/STM/VLDR/VSTR/VLDM/VSTM/LDREX/STREX on an address
    that is not word aligned (a UsageFault on the chip); it watches every memory access from Python,
    so it costs several times the run time and is off by default.
    """

    def __init__(self, image: bytes, arena_bytes: int, *, stack_bytes: int = DEFAULT_STACK_BYTES,
                 ranges: Sequence[tuple[str, int, int]] = (), where: str = "<binary>",
                 max_blocks: int = DEFAULT_MAX_BLOCKS, check_alignment: bool = False):
        if arena_bytes < 0 or stack_bytes <= 0 or stack_bytes % 8:
            raise ValueError("arena_bytes must be >= 0 and stack_bytes a positive multiple of 8")
        self.image = bytes(image)
        self.arena_bytes = arena_bytes
        self.stack_bytes = _round_up(stack_bytes, PAGE)
        self.where = where
        self.max_blocks = max_blocks
        self.check_alignment = check_alignment
        self._insns: dict[int, Insn] = {}
        self.model = CycleModel(self.image, CODE_BASE, ranges)
        # The arena ends on a page boundary (overruns fault at once) and starts 8-aligned.
        self._arena_pages = _round_up(max(_round_up(arena_bytes, 8), 8), PAGE)
        self.arena_address = ARENA_BASE + self._arena_pages - max(_round_up(arena_bytes, 8), 8)
        self._code_pages = _round_up(max(len(self.image), 1), PAGE)
        self.stack_bottom = STACK_TOP - self.stack_bytes

    # -- the run ------------------------------------------------------------------------------------

    def call(self, entry: int, arena: bytes | bytearray | None = None) -> RunResult:
        """Run `entry(model, arena)` (entry = offset of the code in the image) to its return."""
        if not 0 <= entry < len(self.image) or entry % 2:
            raise ValueError(f"entry offset {entry} is not an even offset inside the {len(self.image)}-byte image")
        if arena is not None and len(arena) != self.arena_bytes:
            raise ValueError(f"arena has {len(arena)} bytes, expected {self.arena_bytes}")
        uc = self._machine(arena)
        seeds = self._seed_registers(uc)

        edges: dict = {}
        prev = None
        blocks = 0
        limit = self.max_blocks

        def on_block(uc: Uc, address: int, size: int, _: object) -> None:
            nonlocal prev, blocks
            key = (address, size)
            edge = (prev, key)
            edges[edge] = edges.get(edge, 0) + 1
            prev = key
            blocks += 1
            if blocks > limit:
                uc.emu_stop()

        faults: list[_Fault] = []

        def on_invalid(uc: Uc, access: int, address: int, size: int, value: int, _: object) -> bool:
            faults.append(_Fault(_ACCESS.get(access, "access"), address, size, uc.reg_read(A.UC_ARM_REG_PC)))
            return False

        def on_slack(uc: Uc, access: int, address: int, size: int, value: int, _: object) -> None:
            if not faults:
                faults.append(_Fault(_ACCESS.get(access, "access"), address, size,
                                     uc.reg_read(A.UC_ARM_REG_PC)))
            uc.emu_stop()

        def on_access(uc: Uc, access: int, address: int, size: int, value: int, _: object) -> None:
            if address & 3:
                pc = uc.reg_read(A.UC_ARM_REG_PC)
                insn = self._insn_at(pc)
                if insn is not None and (insn.kind in _WORD_ALIGNED_KINDS or insn.mnemonic in _EXCLUSIVE):
                    if not faults:
                        faults.append(_Fault(_ACCESS.get(access, "access"), address, size, pc, aligned=True))
                    uc.emu_stop()

        uc.hook_add(UC_HOOK_BLOCK, on_block)
        uc.hook_add(UC_HOOK_MEM_INVALID, on_invalid)
        if self.check_alignment:
            uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, on_access)
        for lo, hi, kinds in self._slack_ranges():
            uc.hook_add(kinds, on_slack, begin=lo, end=hi - 1)

        try:
            uc.emu_start(CODE_BASE + entry | 1, RETURN_ADDRESS)
        except UcError as e:
            if faults:
                raise self._fault_error(faults[0], prev) from None
            pc = uc.reg_read(A.UC_ARM_REG_PC)
            before = self._insn_at(pc - 2)
            if before is not None and before.size == 2 and before.mnemonic in ("svc", "bkpt"):
                pc -= 2                    # unicorn reports the exception after the instruction
            raise CompileError(f"the run stopped: {e} at {self._describe_pc(pc)}", self._loc(pc)) from None
        if faults:
            raise self._fault_error(faults[0], prev)
        pc = uc.reg_read(A.UC_ARM_REG_PC)
        if blocks > limit:
            raise CompileError(f"the code did not return after {limit:,} basic blocks "
                               f"(now at {self._describe_pc(pc)})", self._loc(pc))
        if pc != RETURN_ADDRESS:
            raise CompileError(f"the run stopped at {self._describe_pc(pc)} without returning", self._loc(pc))
        self._check_abi(uc, seeds)

        report = self.model.account(edges, prev)
        arena_out = bytes(uc.mem_read(self.arena_address, self.arena_bytes)) if self.arena_bytes else b""
        return RunResult(arena_out, report.cycles, report.instructions, self._stack_high_water(uc), blocks,
                         report.ranges)

    # -- set-up -------------------------------------------------------------------------------------

    def _machine(self, arena: bytes | bytearray | None) -> Uc:
        uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB)
        # UC_MODE_MCLASS would silently select a Cortex-M33; the model is chosen explicitly.
        uc.ctl_set_cpu_model(A.UC_CPU_ARM_CORTEX_M4)
        uc.mem_map(CODE_BASE, self._code_pages, UC_PROT_READ | UC_PROT_EXEC)
        uc.mem_write(CODE_BASE, self.image)
        uc.mem_map(ARENA_BASE, self._arena_pages, UC_PROT_READ | UC_PROT_WRITE)
        if arena:
            uc.mem_write(self.arena_address, bytes(arena))
        uc.mem_map(self.stack_bottom, self.stack_bytes, UC_PROT_READ | UC_PROT_WRITE)
        uc.mem_write(self.stack_bottom, bytes([STACK_FILL]) * self.stack_bytes)
        return uc

    def _slack_ranges(self) -> list[tuple[int, int, int]]:
        """Mapped bytes that belong to no region: (lo, hi, hook kinds); the binary's tail is read-only."""
        out = []
        code_end = CODE_BASE + len(self.image)
        if code_end < CODE_BASE + self._code_pages:
            out.append((code_end, CODE_BASE + self._code_pages, UC_HOOK_MEM_READ))
        rw = UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE
        if self.arena_address > ARENA_BASE:
            out.append((ARENA_BASE, self.arena_address, rw))
        arena_end = self.arena_address + self.arena_bytes
        if arena_end < ARENA_BASE + self._arena_pages:
            out.append((arena_end, ARENA_BASE + self._arena_pages, rw))
        return out

    def _seed_registers(self, uc: Uc) -> dict[int, int]:
        """Arguments per the AAPCS, and distinct values in every other register to check and expose."""
        uc.reg_write(A.UC_ARM_REG_R0, CODE_BASE)
        uc.reg_write(A.UC_ARM_REG_R1, self.arena_address)
        for i, reg in enumerate((A.UC_ARM_REG_R2, A.UC_ARM_REG_R3, A.UC_ARM_REG_R12)):
            uc.reg_write(reg, 0xBAD0_0000 + i)
        uc.reg_write(A.UC_ARM_REG_SP, STACK_TOP)
        uc.reg_write(A.UC_ARM_REG_LR, RETURN_ADDRESS | 1)
        seeds = {}
        for i, reg in enumerate(_CALLEE_SAVED_CORE):
            seeds[reg] = 0x4C4D_0004 + 0x0101 * i
            uc.reg_write(reg, seeds[reg])
        for i, reg in enumerate(_CALLEE_SAVED_FP):
            # finite floats (so a test that does arithmetic on them does not trip on NaNs)
            seeds[reg] = struct.unpack("<I", struct.pack("<f", 1000.0 + 16 + i))[0]
            uc.reg_write(reg, seeds[reg])
        for i, reg in enumerate(_SCRATCH_FP):
            uc.reg_write(reg, struct.unpack("<I", struct.pack("<f", -1000.0 - i))[0])
        seeds[A.UC_ARM_REG_SP] = STACK_TOP
        return seeds

    # -- after the run -----------------------------------------------------------------------------

    def _check_abi(self, uc: Uc, seeds: dict[int, int]) -> None:
        names = {reg: f"r{i + 4}" for i, reg in enumerate(_CALLEE_SAVED_CORE)}
        names.update({reg: f"s{i + 16}" for i, reg in enumerate(_CALLEE_SAVED_FP)})
        names[A.UC_ARM_REG_SP] = "sp"
        bad = [names[reg] for reg, value in seeds.items() if uc.reg_read(reg) & 0xFFFF_FFFF != value]
        if bad:
            raise CompileError(f"the code does not preserve {', '.join(bad)} (the AAPCS makes r4-r11, "
                               "s16-s31 and sp callee-saved)", Loc(self.where))

    def _stack_high_water(self, uc: Uc) -> int:
        data = np.frombuffer(bytes(uc.mem_read(self.stack_bottom, self.stack_bytes)), dtype=np.uint8)
        touched = np.flatnonzero(data != STACK_FILL)
        return int(self.stack_bytes - touched[0]) if touched.size else 0

    # -- errors -------------------------------------------------------------------------------------

    def _insn_at(self, pc: int) -> Insn | None:
        insn = self._insns.get(pc)
        if insn is None and CODE_BASE <= pc < CODE_BASE + len(self.image) - 1:
            insn = self._insns[pc] = decode(self.image, pc - CODE_BASE)
        return insn

    def _loc(self, pc: int) -> Loc:
        label = self.model.label_of(pc - CODE_BASE) if CODE_BASE <= pc < CODE_BASE + len(self.image) else None
        return Loc(self.where, layer=label) if label else Loc(self.where)

    def _describe_pc(self, pc: int) -> str:
        off = pc - CODE_BASE
        if 0 <= off <= len(self.image) - 2:
            return f"code offset {off:#x} ({decode(self.image, off).text()})"
        return f"address {pc:#010x}"

    def describe_address(self, address: int) -> str:
        """Where `address` lies relative to the mapped regions, in words."""
        code_end = CODE_BASE + len(self.image)
        arena_off = address - self.arena_address
        if CODE_BASE <= address < code_end:
            return f"binary offset {address - CODE_BASE}: the binary is read-only"
        if code_end <= address < code_end + 0x10_0000:
            return f"binary offset {address - CODE_BASE}, past the end of the {len(self.image)}-byte binary"
        if self.stack_bottom - 0x10_0000 <= address < self.stack_bottom:
            return f"{self.stack_bottom - address} bytes below the {self.stack_bytes}-byte stack: stack overflow"
        if 0 <= arena_off < self.arena_bytes:
            return f"arena offset {arena_off}"
        if self.stack_bottom <= address < STACK_TOP:
            return f"stack, sp + {address - self.stack_bottom} from its bottom"
        if -0x100_0000 <= arena_off < 0 or self.arena_bytes <= arena_off < self.arena_bytes + 0x100_0000:
            return f"arena offset {arena_off}, outside the {self.arena_bytes}-byte arena"
        return "outside the binary, the arena and the stack"

    def _fault_error(self, fault: _Fault, last_block: tuple[int, int] | None) -> CompileError:
        if fault.access == "fetch":
            origin, loc = "", Loc(self.where)
            if last_block is not None and CODE_BASE <= last_block[0] < CODE_BASE + len(self.image):
                last = self.model.block(last_block).last
                origin = f" by the instruction at {self._describe_pc(CODE_BASE + last.offset)}"
                loc = self._loc(CODE_BASE + last.offset)
            return CompileError(f"jump to {fault.address:#010x} ({self.describe_address(fault.address)})"
                                f"{origin}", loc)
        if fault.aligned:
            return CompileError(f"unaligned {fault.access} at {fault.address:#010x} "
                                f"({self.describe_address(fault.address)}) by the instruction at "
                                f"{self._describe_pc(fault.pc)}, which needs a word-aligned address "
                                "(a UsageFault on the Cortex-M4)", self._loc(fault.pc))
        return CompileError(f"invalid {fault.access} of {fault.size} bytes at {fault.address:#010x} "
                            f"({self.describe_address(fault.address)}) by the instruction at "
                            f"{self._describe_pc(fault.pc)}", self._loc(fault.pc))
