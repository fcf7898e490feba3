//! ARM semihosting (the debugger's, here qemu's, services reached with `bkpt 0xAB`): text
//! on the host's stdout and the exit code. Lines are formatted into a fixed buffer.

use core::fmt;

/// SYS_WRITE0: print a NUL-terminated string.
const SYS_WRITE0: u32 = 0x04;
/// SYS_EXIT: stop; the reason decides qemu's exit code.
const SYS_EXIT: u32 = 0x18;
/// ADP_Stopped_ApplicationExit: qemu exits with 0.
const EXIT_OK: u32 = 0x20026;
/// ADP_Stopped_RunTimeErrorUnknown: qemu exits with 1.
const EXIT_ERROR: u32 = 0x20023;

fn call(op: u32, arg: u32) -> u32 {
    let r;
    // SAFETY: the semihosting trap reads r0 (operation) and r1 (argument: a pointer to a
    // NUL-terminated string that outlives the call, or a plain number) and writes r0.
    unsafe {
        core::arch::asm!("bkpt 0xab", inout("r0") op => r, in("r1") arg, options(nostack));
    }
    r
}

/// Text written to the host in chunks of at most `N - 1` bytes.
pub struct Out {
    buf: [u8; 256],
    len: usize,
}

impl Out {
    pub const fn new() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }

    /// Sends what is buffered.
    pub fn flush(&mut self) {
        if self.len > 0 {
            self.buf[self.len] = 0;
            call(SYS_WRITE0, self.buf.as_ptr() as u32);
            self.len = 0;
        }
    }
}

impl fmt::Write for Out {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() - 1 {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Ends the program; qemu exits with 0 when `ok`, else 1.
pub fn exit(ok: bool) -> ! {
    call(SYS_EXIT, if ok { EXIT_OK } else { EXIT_ERROR });
    // not reached under semihosting; without a host, stay here
    loop {
        core::hint::spin_loop();
    }
}
