//! Where a kernel that writes every element of its output puts it: a `&mut [f32]`, or a
//! fresh vector's spare capacity ([`fresh_vec`]), so a new output is not zeroed first
//! only to be overwritten.

use alloc::vec::Vec;
use core::mem::MaybeUninit;

mod sealed {
    use core::mem::MaybeUninit;

    /// The kernels' access to an output: its slots, and the mark that all are written.
    /// Private, so no code outside the crate can write an uninitialized value into a
    /// `[f32]` through it.
    pub trait Slots {
        fn slots(&mut self) -> &mut [MaybeUninit<f32>];
        fn written(&mut self);
    }
}

/// An output buffer of a kernel that writes every element: `[f32]` or [`Fresh`].
pub trait Output: sealed::Slots {}

impl sealed::Slots for [f32] {
    fn slots(&mut self) -> &mut [MaybeUninit<f32>] {
        // SAFETY: same layout; the kernels only ever store initialized floats through it.
        unsafe { &mut *(self as *mut [f32] as *mut [MaybeUninit<f32>]) }
    }
    fn written(&mut self) {}
}
impl Output for [f32] {}

/// The spare capacity of a vector being filled by [`fresh_vec`].
#[derive(Debug)]
pub struct Fresh<'a> {
    slots: &'a mut [MaybeUninit<f32>],
    written: bool,
}

impl Fresh<'_> {
    /// Number of floats the kernel must write.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

impl sealed::Slots for Fresh<'_> {
    fn slots(&mut self) -> &mut [MaybeUninit<f32>] {
        self.slots
    }
    fn written(&mut self) {
        self.written = true;
    }
}
impl Output for Fresh<'_> {}

/// A vector of `len` floats written by `kernel` (a closure calling one kernel on the
/// [`Fresh`] output) without a zero pass first. A closure that calls no kernel leaves zeros.
pub fn fresh_vec(len: usize, kernel: impl FnOnce(&mut Fresh<'_>)) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    let mut fresh = Fresh {
        slots: &mut v.spare_capacity_mut()[..len],
        written: false,
    };
    kernel(&mut fresh);
    if !fresh.written {
        fresh.slots.fill(MaybeUninit::new(0.0));
    }
    // SAFETY: every slot was written, by the kernel (which marks it only after writing
    // all of them) or by the fill above.
    unsafe { v.set_len(len) };
    v
}

/// The slots of `out`, asserted to hold `len` floats.
#[inline]
pub(crate) fn slots<'a, O: Output + ?Sized>(
    out: &'a mut O,
    len: usize,
    what: &str,
) -> &'a mut [MaybeUninit<f32>] {
    let s = out.slots();
    assert_eq!(s.len(), len, "{what} output length");
    s
}

/// Marks `out` completely written.
///
/// # Safety
/// Every slot of `out` holds an initialized float.
#[inline]
pub(crate) unsafe fn mark_written<O: Output + ?Sized>(out: &mut O) {
    out.written();
}

/// Copies `src` into `dst` (equal lengths).
#[inline(always)]
pub(crate) fn copy_into(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "copy lengths");
    // SAFETY: equal lengths (asserted), distinct borrows cannot overlap; an f32 is a valid
    // `MaybeUninit<f32>`.
    unsafe {
        core::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr() as *mut f32, src.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_vec_keeps_what_the_kernel_wrote_and_zeroes_otherwise() {
        let v = fresh_vec(3, |o| {
            let s = slots(o, 3, "test");
            copy_into(s, &[1.0, 2.0, 3.0]);
            // SAFETY: all three written above
            unsafe { mark_written(o) };
        });
        assert_eq!(v, [1.0, 2.0, 3.0]);
        assert_eq!(fresh_vec(2, |_| {}), [0.0, 0.0]);
    }
}
