//! Spreading independent pieces of a kernel's output over rayon's pool (with the `std`
//! feature), or running them in order on the calling thread. The kernels call these from
//! inside rayon's pool too (a search runs an edge's operations side by side), where
//! spawning threads of their own would oversubscribe the cores. No result depends on how
//! the pieces are spread: each piece is computed the same way on any thread.

use alloc::vec::Vec;

#[cfg(feature = "std")]
use rayon::prelude::*;

/// Threads of the pool the kernels run on (1 without `std`).
#[inline]
pub(crate) fn threads() -> usize {
    #[cfg(feature = "std")]
    {
        rayon::current_num_threads()
    }
    #[cfg(not(feature = "std"))]
    {
        1
    }
}

/// `f(i, chunk i)` for the `chunk`-long pieces of `out`, on the pool when `parallel`.
#[inline]
pub(crate) fn chunks<T: Send>(
    out: &mut [T],
    chunk: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    #[cfg(feature = "std")]
    if parallel {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, o)| f(i, o));
        return;
    }
    let _ = parallel;
    out.chunks_mut(chunk).enumerate().for_each(|(i, o)| f(i, o));
}

/// [`chunks`] with a scratch value per worker (`init`), at least `min_len` chunks a task.
#[inline]
pub(crate) fn chunks_with<T: Send, S>(
    out: &mut [T],
    chunk: usize,
    parallel: bool,
    min_len: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [T]) + Sync + Send,
) {
    #[cfg(feature = "std")]
    if parallel {
        out.par_chunks_exact_mut(chunk)
            .enumerate()
            .with_min_len(min_len)
            .for_each_init(init, |s, (i, o)| f(s, i, o));
        return;
    }
    let _ = (parallel, min_len);
    let mut s = init();
    out.chunks_exact_mut(chunk)
        .enumerate()
        .for_each(|(i, o)| f(&mut s, i, o));
}

/// `[f(0), .., f(n - 1)]`, on the pool when `parallel`.
#[inline]
pub(crate) fn map<T: Send>(
    n: usize,
    parallel: bool,
    f: impl Fn(usize) -> T + Sync + Send,
) -> Vec<T> {
    #[cfg(feature = "std")]
    if parallel {
        return (0..n).into_par_iter().map(f).collect();
    }
    let _ = parallel;
    (0..n).map(f).collect()
}

/// `f(i)` for `i` in `0..n`, on the pool when `parallel`.
#[inline]
pub(crate) fn each(n: usize, parallel: bool, f: impl Fn(usize) + Sync + Send) {
    #[cfg(feature = "std")]
    if parallel {
        (0..n).into_par_iter().for_each(f);
        return;
    }
    let _ = parallel;
    (0..n).for_each(f)
}

/// Runs `f(input plane, output plane, extra plane)` over all `planes`, split into one
/// contiguous run of planes per thread when the work is large enough to pay for the
/// threads (`planes * max(in_len, out_len)` from 2^16 floats).
#[allow(clippy::too_many_arguments)]
pub(crate) fn for_planes<T: Send>(
    planes: usize,
    input: &[f32],
    in_len: usize,
    out: &mut [f32],
    out_len: usize,
    extra: &mut [T],
    extra_len: usize,
    f: impl Fn(&[f32], &mut [f32], &mut [T]) + Sync,
) {
    let work = planes * in_len.max(out_len);
    let threads = if work < 1 << 16 {
        1
    } else {
        threads().min(planes)
    };
    let per = planes.div_ceil(threads.max(1)).max(1);
    let run = |first: usize, out: &mut [f32], extra: &mut [T]| {
        let count = out.len() / out_len.max(1);
        for i in 0..count {
            let e = if extra_len == 0 {
                &mut [][..]
            } else {
                &mut extra[i * extra_len..][..extra_len]
            };
            f(
                &input[(first + i) * in_len..][..in_len],
                &mut out[i * out_len..][..out_len],
                e,
            );
        }
    };
    #[cfg(feature = "std")]
    if threads > 1 {
        let mut extra_chunks: Vec<&mut [T]> = if extra_len == 0 {
            (0..threads).map(|_| &mut [][..]).collect()
        } else {
            extra.chunks_mut(per * extra_len).collect()
        };
        let pieces: Vec<(usize, &mut [f32], &mut [T])> = out
            .chunks_mut(per * out_len)
            .enumerate()
            .map(|(t, chunk)| (t, chunk, core::mem::take(&mut extra_chunks[t])))
            .collect();
        pieces
            .into_par_iter()
            .for_each(|(t, chunk, e)| run(t * per, chunk, e));
        return;
    }
    let _ = per;
    run(0, out, extra);
}
