@ The built-in assembler gives the bytes GNU as + objcopy give.
@ RUN: ml4f-as %s -o %t.bin --listing --symbols | filecheck %s
@ RUN: arm-none-eabi-as -mcpu=cortex-m4 -mfpu=fpv4-sp-d16 -mthumb %s -o %t.o
@ RUN: arm-none-eabi-objcopy -O binary %t.o %t.gnu.bin && cmp %t.bin %t.gnu.bin

    .syntax unified
    .thumb
    .thumb_func
scale:                          @ r0 = x, r1 = n: x[i] = x[i] * 0.5 + 3.0 (int8 rescale below)
    vmov.f32 s1, #0.5
    vldr s2, three
    cbz r1, done
loop:
    vldr s0, [r0]
    vfma.f32 s2, s0, s1
    vstmia r0!, {s2}
    subs r1, #1
    bne loop
done:
    ldr r2, =0x00ff00ff
    sxtb16 r3, r2, ror #8
    smlad r3, r3, r2, r3
    ssat r3, #8, r3, asr #7
    bx lr
    .align 2
three: .float 3.0

@ CHECK:      00000000: eef6 0a00    vmov.f32 s1, #0.5
@ CHECK-NEXT: 00000004: ed9f 1a09    vldr s2, three
@ CHECK-NEXT: 00000008: b139         cbz r1, done
@ CHECK:      00000018: d1f7         bne loop
@ CHECK-NEXT: 0000001a: f04f 12ff    ldr r2, =0x00ff00ff
@ CHECK-NEXT: 0000001e: fa2f f392    sxtb16 r3, r2, ror #8
@ CHECK-NEXT: 00000022: fb23 3302    smlad r3, r3, r2, r3
@ CHECK-NEXT: 00000026: f323 13c7    ssat r3, #8, r3, asr #7
@ CHECK-NEXT: 0000002a: 4770         bx lr
@ CHECK-NEXT: 0000002c: 00004040     three: .float 3.0
@ CHECK:      00000000 scale
@ CHECK-NEXT: 0000000a loop
@ CHECK-NEXT: 0000001a done
@ CHECK-NEXT: 0000002c three
