//! The int8 engine: on the CPU backends a QDQ model (QuantizeLinear / DequantizeLinear
//! around its ops) runs on int8 buffers with the integer kernels of
//! `splitnas_kernels::int8`, instead of the float plan's fake quantization.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

/// The environment variable that turns the int8 engine off when set to `0` (or `off`,
/// `false`, `no`): QDQ models then run on the float path.
pub const INT8_ENV: &str = "SPLITNAS_INT8";

/// Process-wide setting: 0 not read yet, 1 on, 2 off.
static PROCESS: AtomicU8 = AtomicU8::new(0);

thread_local! {
    static THREAD: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether models loaded on this thread may use the int8 engine: this thread's
/// [`with_int8`] override, else [`INT8_ENV`] (on unless it says `0`, `off`, `false`, `no`).
pub fn int8_enabled() -> bool {
    if let Some(on) = THREAD.with(Cell::get) {
        return on;
    }
    match PROCESS.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let off = std::env::var(INT8_ENV).is_ok_and(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "0" | "off" | "false" | "no"
                )
            });
            PROCESS.store(if off { 2 } else { 1 }, Ordering::Relaxed);
            !off
        }
    }
}

/// Runs `f` with the int8 engine on or off for models loaded on this thread (tests
/// comparing the engine with the float path).
pub fn with_int8<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<bool>);
    impl Drop for Reset {
        fn drop(&mut self) {
            THREAD.with(|t| t.set(self.0));
        }
    }
    let _reset = Reset(THREAD.with(|t| t.replace(Some(on))));
    f()
}
