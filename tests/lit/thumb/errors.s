@ Bad input: one line with file:line:col, exit status 1, no traceback.
@ RUN: not ml4f-as %s -o %t.bin 2>&1 | filecheck %s
@ CHECK: errors.s:6:13: error: cannot encode 'ldr r0, [r1, #5000]': offset 5000 out of range -255..4095
@ CHECK-NOT: Traceback
    .syntax unified
    ldr r0, [r1, #5000]
