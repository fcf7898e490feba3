//! Cortex-M4 firmware: runs one compiled plan (`splitnas compile --target cortex-m4`) on
//! one image, both embedded at build time (see `build.rs`; `run-qemu.sh PLAN INPUT.npy`
//! builds and runs it under `qemu-system-arm -M mps2-an386`), and prints over
//! semihosting:
//!
//! ```text
//! plan: 141 ops, 75 tensors, arena 73504 bytes
//! output_quant=0.09717885,-17 scale_bits=0x3dc705b4
//! class=9
//! logits=-46,-62,-80,-47,-57,44,-76,71,-17,75
//! ```
//!
//! `logits=` is the last line: the int8 codes; `(code - zero) * scale` with
//! `output_quant=scale,zero` (the scale's float32 bits beside it) are the floats `splitnas run PLAN --input INPUT.npy --output`
//! writes. No allocator, no OS: the arena is a static buffer of the plan's size, the
//! stack and it share the 256 KiB RAM region of `link.x`.
#![no_std]
#![no_main]

mod semihosting;

use core::fmt::Write;
use semihosting::{exit, Out};
use splitnas_kernels::int8::quant::quantize_one;
use splitnas_micro::Plan;

include!(concat!(env!("OUT_DIR"), "/sizes.rs"));

/// The plan's bytes, in flash.
static PLAN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/model.plan"));
/// The image's float32 values (little endian), in flash.
static INPUT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/input.f32"));

/// The activations' arena, the quantized image and the logits: statics in RAM (zeroed at
/// reset), so that their size counts at link time, not on the stack.
static mut ARENA: [i8; ARENA_LEN] = [0; ARENA_LEN];
static mut IMAGE: [i8; INPUT_LEN] = [0; INPUT_LEN];
static mut LOGITS: [i8; OUTPUT_LEN] = [0; OUTPUT_LEN];

// The vector table (initial stack pointer, reset, the 14 system exceptions) and the reset
// handler: zero .bss, copy .data from flash, give the FPU full access (eabihf code uses
// it), then `start`.
core::arch::global_asm!(
    r#"
    .section .vector_table, "a", %progbits
    .word __stack_top
    .word Reset
    .rept 14
    .word Fault
    .endr

    .section .text.Reset, "ax", %progbits
    .global Reset
    .type Reset, %function
    .thumb_func
Reset:
    ldr r0, =__sbss
    ldr r1, =__ebss
    movs r2, #0
1:  cmp r0, r1
    bhs 2f
    str r2, [r0], #4
    b 1b
2:  ldr r0, =__sdata
    ldr r1, =__edata
    ldr r2, =__sidata
3:  cmp r0, r1
    bhs 4f
    ldr r3, [r2], #4
    str r3, [r0], #4
    b 3b
4:  ldr r0, =0xE000ED88
    ldr r1, [r0]
    orr r1, r1, #0xF00000
    str r1, [r0]
    dsb
    isb
    bl start
    b .
"#
);

/// Any fault or unexpected interrupt.
#[no_mangle]
extern "C" fn Fault() -> ! {
    let mut out = Out::new();
    let _ = writeln!(out, "error: processor fault");
    out.flush();
    exit(false)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut out = Out::new();
    let _ = writeln!(out, "error: panic: {info}");
    out.flush();
    exit(false)
}

#[no_mangle]
extern "C" fn start() -> ! {
    let mut out = Out::new();
    let ok = run(&mut out);
    out.flush();
    exit(ok)
}

fn run(out: &mut Out) -> bool {
    let plan = match Plan::parse(PLAN) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(out, "error: the embedded plan: {e}");
            return false;
        }
    };
    let _ = writeln!(
        out,
        "plan: {} ops, {} tensors, arena {} bytes",
        plan.ops_len(),
        plan.tensors_len(),
        plan.arena_len()
    );
    // the host's `splitnas run` quantizes the same way (`quant::quantize`, one scale)
    // SAFETY: the only references to these statics, taken once on this single thread.
    let (arena, x, logits): (&mut [i8], &mut [i8], &mut [i8]) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(ARENA),
            &mut *core::ptr::addr_of_mut!(IMAGE),
            &mut *core::ptr::addr_of_mut!(LOGITS),
        )
    };
    let iq = plan.input_quant();
    for (q, v) in x.iter_mut().zip(INPUT.chunks_exact(4)) {
        let v = f32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        *q = quantize_one(v, iq.scale, iq.zero);
    }
    if let Err(e) = plan.run(arena, x, logits) {
        let _ = writeln!(out, "error: running the plan: {e}");
        return false;
    }
    let oq = plan.output_quant();
    let _ = writeln!(
        out,
        "output_quant={:?},{} scale_bits={:#010x}",
        oq.scale,
        oq.zero,
        oq.scale.to_bits()
    );
    // first of the largest, as `splitnas run` ranks
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    let _ = writeln!(out, "class={best}");
    let _ = write!(out, "logits=");
    for (i, v) in logits.iter().enumerate() {
        let _ = write!(out, "{}{v}", if i > 0 { "," } else { "" });
    }
    let _ = writeln!(out);
    true
}
