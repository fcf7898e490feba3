//! Square max and average pooling with fast CPU kernels and their backward pass.
//!
//! Burn 0.21's flex backend pools by walking every window element by element with
//! a bounds check and an `i64` argmax per output, and its backward scatters through
//! those indices; on a search step that was about a quarter of the time. The
//! kernels here sweep whole output rows per kernel offset (contiguous slices at
//! stride 1, so the compiler vectorizes them), keep the max-pool argmax as `u32`
//! on the host and split the `N * C` planes over the cores.
//!
//! [`max_pool2d`] and [`avg_pool2d`] (average over the window's elements inside
//! the image, PyTorch's `count_include_pad=False`) serve `Flex`, `NdArray` and
//! their `Autodiff` wrappers; other backends (CUDA, wgpu) and options the kernels
//! do not cover (padding above half the kernel) use Burn's pooling unchanged.
//! The tests compare outputs and gradients with Burn's own pooling.

use std::any::{Any, TypeId};
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::{Flex, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

/// `kernel x kernel` max pooling with `stride` and `padding` (padding counts as minus
/// infinity), as `burn::tensor::module::max_pool2d` without dilation or ceil mode.
pub fn max_pool2d<B: Backend>(
    x: Tensor<B, 4>,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Tensor<B, 4> {
    pool::<B>(x, Window::new(kernel, stride, padding), Kind::Max)
}

/// `kernel x kernel` average pooling over the window's elements inside the image
/// (`count_include_pad = false`), as `burn::tensor::module::avg_pool2d`.
pub fn avg_pool2d<B: Backend>(
    x: Tensor<B, 4>,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Tensor<B, 4> {
    pool::<B>(x, Window::new(kernel, stride, padding), Kind::Avg)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Max,
    Avg,
}

/// Square window: kernel size, stride, padding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    k: usize,
    s: usize,
    p: usize,
}

impl Window {
    pub(crate) fn new(k: usize, s: usize, p: usize) -> Self {
        Self { k, s, p }
    }

    /// Kernels cover every window that holds at least one image element.
    fn supported(&self, h: usize, w: usize) -> bool {
        self.k > 0
            && self.s > 0
            && 2 * self.p <= self.k
            && h + 2 * self.p >= self.k
            && w + 2 * self.p >= self.k
    }

    fn out_len(&self, len: usize) -> usize {
        (len + 2 * self.p - self.k) / self.s + 1
    }

    /// Output positions `o` in `[lo, hi)` whose input `o * s + d - p` lies in `[0, len)`
    /// (`d`: the kernel offset, dilated for a convolution).
    pub(crate) fn valid(&self, d: usize, len: usize, out: usize) -> (usize, usize) {
        let lo = self.p.saturating_sub(d).div_ceil(self.s);
        let hi = if len + self.p > d {
            ((len - 1 + self.p - d) / self.s + 1).min(out)
        } else {
            0
        };
        (lo, hi.max(lo))
    }
}

fn pool<B: Backend>(x: Tensor<B, 4>, win: Window, kind: Kind) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    if win.supported(h, w) {
        let b = TypeId::of::<B>();
        if b == TypeId::of::<Autodiff<Flex>>() {
            return same(pool_autodiff::<Flex>(same(x), win, kind));
        }
        if b == TypeId::of::<Autodiff<NdArray>>() {
            return same(pool_autodiff::<NdArray>(same(x), win, kind));
        }
        if b == TypeId::of::<Flex>() || b == TypeId::of::<NdArray>() {
            return pool_forward(x, win, kind).0;
        }
    }
    let (k, s, p) = ([win.k; 2], [win.s; 2], [win.p; 2]);
    match kind {
        Kind::Max => burn::tensor::module::max_pool2d(x, k, s, p, [1, 1], false),
        Kind::Avg => burn::tensor::module::avg_pool2d(x, k, s, p, false, false),
    }
}

/// Moves a value between two types that `TypeId` has shown to be the same.
pub(crate) fn same<T: 'static, U: 'static>(value: T) -> U {
    let boxed: Box<dyn Any> = Box::new(value);
    *boxed
        .downcast::<U>()
        .expect("caller checked the TypeIds are equal")
}

/// The running maximum and its index after seeing value `v` at index `i`: `(v, i)` when
/// `v > o`, else `(o, a)` (the earlier index wins ties; NaN never replaces). Written as
/// bit masks with unconditional results so the row loops vectorize: as `if`s the
/// compiler emitted one conditional store per lane, and max pooling took five times as
/// long as average pooling on the same windows.
#[inline(always)]
fn keep_max(o: f32, a: u32, v: f32, i: u32) -> (f32, u32) {
    let m = 0u32.wrapping_sub((v > o) as u32);
    (
        f32::from_bits((o.to_bits() & !m) | (v.to_bits() & m)),
        (a & !m) | (i & m),
    )
}

/// Shapes of one pooling call.
#[derive(Clone, Debug)]
struct Geometry {
    planes: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    win: Window,
    /// Per kernel column `dx`: the output columns `[lo, hi)` whose input column lies
    /// inside the image, and the input column of output `lo`. Computed once per call:
    /// recomputing them per row (two integer divisions each) cost more than the
    /// pooling itself on 32-wide planes.
    spans: Vec<(usize, usize, usize)>,
}

impl Geometry {
    fn new(dims: [usize; 4], win: Window) -> Self {
        let [n, c, h, w] = dims;
        let wo = win.out_len(w);
        Self {
            planes: n * c,
            h,
            w,
            ho: win.out_len(h),
            wo,
            win,
            spans: (0..win.k)
                .map(|dx| {
                    let (lo, hi) = win.valid(dx, w, wo);
                    (lo, hi, (lo * win.s + dx).saturating_sub(win.p))
                })
                .collect(),
        }
    }

    /// Max pooling of one plane; `arg` receives the flat input index of each output's
    /// maximum (the first one in row-major window order, as Burn and PyTorch pick).
    fn max_plane(&self, x: &[f32], out: &mut [f32], arg: &mut [u32]) {
        let Geometry {
            h,
            w,
            wo,
            win,
            ref spans,
            ..
        } = *self;
        for (oh, (orow, arow)) in out.chunks_mut(wo).zip(arg.chunks_mut(wo)).enumerate() {
            orow.fill(f32::NEG_INFINITY);
            let (r0, r1) = rows(oh, win, h);
            // every output starts at its window's first element inside the image
            for (ow, a) in arow.iter_mut().enumerate() {
                let c0 = (ow * win.s).saturating_sub(win.p);
                *a = (r0 * w + c0) as u32;
            }
            for r in r0..r1 {
                let xrow = &x[r * w..][..w];
                for &(lo, hi, start) in spans.iter() {
                    if lo >= hi {
                        continue;
                    }
                    if win.s == 1 {
                        // branch-free select so the loop vectorizes (stride-1 rows are
                        // contiguous; the flat index grows by one per output)
                        let first = (r * w + start) as u32;
                        let outs = orow[lo..hi].iter_mut().zip(arow[lo..hi].iter_mut());
                        for ((o, a), (&v, i)) in outs.zip(xrow[start..].iter().zip(first..)) {
                            (*o, *a) = keep_max(*o, *a, v, i);
                        }
                    } else {
                        let first = (r * w + start) as u32;
                        let outs = orow[lo..hi].iter_mut().zip(arow[lo..hi].iter_mut());
                        let ins = xrow[start..].iter().step_by(win.s);
                        let idx = (first..).step_by(win.s);
                        for ((o, a), (&v, i)) in outs.zip(ins.zip(idx)) {
                            (*o, *a) = keep_max(*o, *a, v, i);
                        }
                    }
                }
            }
        }
    }

    /// Average pooling of one plane over the window's elements inside the image.
    fn avg_plane(&self, x: &[f32], out: &mut [f32]) {
        let Geometry {
            h,
            w,
            wo,
            win,
            ref spans,
            ..
        } = *self;
        for (oh, orow) in out.chunks_mut(wo).enumerate() {
            orow.fill(0.0);
            let (r0, r1) = rows(oh, win, h);
            for r in r0..r1 {
                let xrow = &x[r * w..][..w];
                for &(lo, hi, start) in spans.iter() {
                    if lo >= hi {
                        continue;
                    }
                    if win.s == 1 {
                        for (o, v) in orow[lo..hi].iter_mut().zip(&xrow[start..]) {
                            *o += v;
                        }
                    } else {
                        for (o, v) in orow[lo..hi]
                            .iter_mut()
                            .zip(xrow[start..].iter().step_by(win.s))
                        {
                            *o += v;
                        }
                    }
                }
            }
            let rows = (r1 - r0) as f32;
            for (ow, o) in orow.iter_mut().enumerate() {
                *o /= rows * cols(ow, win, w) as f32;
            }
        }
    }

    /// Average-pooling gradient of one plane: each output's gradient, divided by
    /// its window's element count, added to every element of the window.
    fn avg_grad_plane(&self, g: &[f32], gx: &mut [f32]) {
        let Geometry {
            h,
            w,
            wo,
            win,
            ref spans,
            ..
        } = *self;
        gx.fill(0.0);
        let mut share = vec![0f32; wo];
        for (oh, grow) in g.chunks(wo).enumerate() {
            let (r0, r1) = rows(oh, win, h);
            let rows = (r1 - r0) as f32;
            for (ow, s) in share.iter_mut().enumerate() {
                *s = grow[ow] / (rows * cols(ow, win, w) as f32);
            }
            for r in r0..r1 {
                let xrow = &mut gx[r * w..][..w];
                for &(lo, hi, start) in spans.iter() {
                    for ow in lo..hi {
                        xrow[start + (ow - lo) * win.s] += share[ow];
                    }
                }
            }
        }
    }
}

/// Input rows `[r0, r1)` of output row `oh`.
fn rows(oh: usize, win: Window, h: usize) -> (usize, usize) {
    let start = oh * win.s;
    (start.saturating_sub(win.p), (start + win.k - win.p).min(h))
}

/// Number of input columns inside the image in output column `ow`'s window.
fn cols(ow: usize, win: Window, w: usize) -> usize {
    let start = ow * win.s;
    (start + win.k - win.p).min(w) - start.saturating_sub(win.p)
}

/// Runs `f(plane, input plane, output plane, extra plane)` over all planes, split over
/// the cores when the work is large enough to pay for the threads.
fn for_planes<T: Send>(
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
        rayon::current_num_threads().min(planes)
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
    if threads <= 1 {
        run(0, out, extra);
        return;
    }
    // On the rayon pool: the calls often come from pool threads already (an edge's
    // operations run side by side), where spawning threads would oversubscribe the cores.
    use rayon::prelude::*;
    let mut extra_chunks: Vec<&mut [T]> = if extra_len == 0 {
        (0..threads).map(|_| &mut [][..]).collect()
    } else {
        extra.chunks_mut(per * extra_len).collect()
    };
    let chunks: Vec<(usize, &mut [f32], &mut [T])> = out
        .chunks_mut(per * out_len)
        .enumerate()
        .map(|(t, chunk)| (t, chunk, std::mem::take(&mut extra_chunks[t])))
        .collect();
    chunks
        .into_par_iter()
        .for_each(|(t, chunk, e)| run(t * per, chunk, e));
}

/// The floats of a tensor in row-major order: read in place from a contiguous f32 flex
/// tensor (the tensor is kept alive, not copied), else a host copy. `into_data` on a
/// tensor another node still holds copied it twice (once to bytes, once more to align
/// them), a tenth of a search step.
pub(crate) struct HostFloats<B: Backend> {
    held: Option<(B::FloatTensorPrimitive, usize, usize)>,
    copy: Vec<f32>,
}

impl<B: Backend> HostFloats<B> {
    pub(crate) fn new<const D: usize>(t: Tensor<B, D>) -> Self {
        let prim = t.into_primitive().tensor();
        if let Some(ft) = (&prim as &dyn Any).downcast_ref::<burn_flex::FlexTensor>() {
            if ft.dtype() == burn::tensor::DType::F32 {
                if let Some((start, end)) = ft.layout().contiguous_offsets() {
                    if ft.storage::<f32>().get(start..end).is_some() {
                        return Self {
                            held: Some((prim, start, end)),
                            copy: Vec::new(),
                        };
                    }
                }
            }
        }
        let copy = Tensor::<B, D>::from_primitive(TensorPrimitive::Float(prim))
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("float tensor data");
        Self { held: None, copy }
    }
}

impl<B: Backend> std::ops::Deref for HostFloats<B> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &self.held {
            Some((prim, start, end)) => {
                let ft = (prim as &dyn Any)
                    .downcast_ref::<burn_flex::FlexTensor>()
                    .expect("held only for flex tensors");
                &ft.storage::<f32>()[*start..*end]
            }
            None => &self.copy,
        }
    }
}

impl<B: Backend> std::fmt::Debug for HostFloats<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostFloats({} values)", self.len())
    }
}

/// Forward kernel on host memory; the max-pool argmax comes back for the backward pass.
fn pool_forward<B: Backend>(x: Tensor<B, 4>, win: Window, kind: Kind) -> (Tensor<B, 4>, Vec<u32>) {
    let device = x.device();
    let dims = x.dims();
    let g = Geometry::new(dims, win);
    let xs = HostFloats::new(x);
    let (in_len, out_len) = (g.h * g.w, g.ho * g.wo);
    let mut out = vec![0f32; g.planes * out_len];
    let mut arg: Vec<u32> = Vec::new();
    match kind {
        Kind::Max => {
            arg = vec![0u32; g.planes * out_len];
            for_planes(
                g.planes,
                &xs,
                in_len,
                &mut out,
                out_len,
                &mut arg,
                out_len,
                |x, o, a| g.max_plane(x, o, a),
            );
        }
        Kind::Avg => {
            for_planes::<u32>(
                g.planes,
                &xs,
                in_len,
                &mut out,
                out_len,
                &mut [],
                0,
                |x, o, _| g.avg_plane(x, o),
            );
        }
    }
    let shape = [dims[0], dims[1], g.ho, g.wo];
    (Tensor::from_data(TensorData::new(out, shape), &device), arg)
}

#[derive(Debug)]
struct PoolBackward;

impl<I: Backend> Backward<I, 1> for PoolBackward {
    /// Input dims, window, kind and (max pooling) the argmax of every output.
    type State = ([usize; 4], Window, Kind, Arc<Vec<u32>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad: Tensor<I, 4> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<I>(&ops.node)));
        let Some(node) = node else { return };
        let (dims, win, kind, arg) = ops.state;
        let device = grad.device();
        let g = Geometry::new(dims, win);
        let gs = HostFloats::new(grad);
        let (in_len, out_len) = (g.h * g.w, g.ho * g.wo);
        let mut gx = vec![0f32; g.planes * in_len];
        match kind {
            Kind::Max => {
                for (p, plane) in gx.chunks_mut(in_len).enumerate() {
                    let (gp, ap) = (
                        &gs[p * out_len..][..out_len],
                        &arg[p * out_len..][..out_len],
                    );
                    for (gv, &a) in gp.iter().zip(ap) {
                        plane[a as usize] += gv;
                    }
                }
            }
            Kind::Avg => {
                for_planes::<u32>(
                    g.planes,
                    &gs,
                    out_len,
                    &mut gx,
                    in_len,
                    &mut [],
                    0,
                    |gp, xp, _| g.avg_grad_plane(gp, xp),
                );
            }
        }
        let gx = Tensor::<I, 4>::from_data(TensorData::new(gx, dims), &device);
        grads.register::<I>(node.id, gx.into_primitive().tensor());
    }
}

fn pool_autodiff<I: Backend>(
    x: Tensor<Autodiff<I>, 4>,
    win: Window,
    kind: Kind,
) -> Tensor<Autodiff<I>, 4> {
    let dims = x.dims();
    let x = x.into_primitive().tensor();
    let inner =
        |t: I::FloatTensorPrimitive| Tensor::<I, 4>::from_primitive(TensorPrimitive::Float(t));
    let out = match PoolBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (y, arg) = pool_forward(inner(x.primitive), win, kind);
            prep.finish(
                (dims, win, kind, Arc::new(arg)),
                y.into_primitive().tensor(),
            )
        }
        OpsKind::UnTracked(prep) => {
            let (y, _) = pool_forward(inner(x.primitive), win, kind);
            prep.finish(y.into_primitive().tensor())
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    type A = Autodiff<Flex>;

    /// Outputs and input gradients of sum(pool(x) * r) against Burn's own pooling.
    fn compare(dims: [usize; 4], k: usize, s: usize, p: usize, kind: Kind, ties: bool) {
        let dev = Default::default();
        let mut x = Tensor::<A, 4>::random(dims, Distribution::Normal(0.0, 1.0), &dev);
        if ties {
            // few distinct values: windows hold equal maxima, argmax order matters
            x = x.mul_scalar(2.0).round();
        }
        let burn_pool = |x: Tensor<A, 4>| match kind {
            Kind::Max => burn::tensor::module::max_pool2d(x, [k, k], [s, s], [p, p], [1, 1], false),
            Kind::Avg => burn::tensor::module::avg_pool2d(x, [k, k], [s, s], [p, p], false, false),
        };
        let reference = burn_pool(x.clone().detach());
        let r = Tensor::<A, 4>::random(reference.dims(), Distribution::Normal(0.0, 1.0), &dev);
        let run = |fast: bool| {
            let x = x.clone().detach().require_grad();
            let y = match (fast, kind) {
                (true, Kind::Max) => max_pool2d(x.clone(), k, s, p),
                (true, Kind::Avg) => avg_pool2d(x.clone(), k, s, p),
                (false, _) => burn_pool(x.clone()),
            };
            let grads = (y.clone() * r.clone()).sum().backward();
            (y.inner(), x.grad(&grads).unwrap())
        };
        let (y1, gx1) = run(true);
        let (y0, gx0) = run(false);
        assert_eq!(y1.dims(), y0.dims(), "{dims:?} k{k} s{s} p{p} {kind:?}");
        let tol = Tolerance::<f32>::absolute(1e-5);
        y1.into_data().assert_approx_eq(&y0.into_data(), tol);
        gx1.into_data().assert_approx_eq(&gx0.into_data(), tol);
    }

    #[test]
    fn matches_burn_pooling_and_its_gradients() {
        let _serial = crate::backward_lock();
        for &dims in &[[2, 3, 8, 8], [1, 2, 7, 5], [2, 1, 1, 1], [1, 70, 16, 16]] {
            for &(k, s, p) in &[(3, 1, 1), (3, 2, 1), (2, 2, 0), (5, 1, 2)] {
                if dims[2] + 2 * p < k || dims[3] + 2 * p < k {
                    continue;
                }
                for kind in [Kind::Max, Kind::Avg] {
                    compare(dims, k, s, p, kind, false);
                    compare(dims, k, s, p, kind, true);
                }
            }
        }
        // large enough to split the planes over threads
        for kind in [Kind::Max, Kind::Avg] {
            compare([4, 32, 32, 32], 3, 1, 1, kind, true);
            compare([4, 32, 31, 31], 3, 2, 1, kind, false);
        }
    }

    #[test]
    fn hand_worked_border_windows() {
        // 3x3 input 1..9, 3x3 window, stride 2, padding 1: outputs at (0,0), (0,2), (2,0), (2,2)
        let dev = Default::default();
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new((1..=9).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 3, 3]),
            &dev,
        );
        let avg: Vec<f32> = avg_pool2d(x.clone(), 3, 2, 1).into_data().to_vec().unwrap();
        // top-left window {1,2,4,5} -> 3; top-right {2,3,5,6} -> 4; bottom-left {4,5,7,8} -> 6; {5,6,8,9} -> 7
        assert_eq!(avg, vec![3.0, 4.0, 6.0, 7.0]);
        let max: Vec<f32> = max_pool2d(x, 3, 2, 1).into_data().to_vec().unwrap();
        assert_eq!(max, vec![5.0, 6.0, 8.0, 9.0]);
    }

    #[test]
    fn plain_backend_and_unsupported_padding_fall_back() {
        let dev = Default::default();
        let x = Tensor::<NdArray, 4>::random([1, 2, 5, 5], Distribution::Default, &dev);
        let fast = avg_pool2d(x.clone(), 3, 1, 1);
        let burn =
            burn::tensor::module::avg_pool2d(x.clone(), [3, 3], [1, 1], [1, 1], false, false);
        fast.into_data()
            .assert_approx_eq::<f32>(&burn.into_data(), Tolerance::absolute(1e-6));
        assert!(!Window::new(3, 1, 2).supported(5, 5));
    }

    /// In-place reads (whole tensor, a narrowed batch at an offset) and copies (a strided
    /// channel slice, NdArray) give the values `into_data` gives.
    #[test]
    fn host_floats_read_views_like_into_data() {
        let device = Default::default();
        let x = Tensor::<Flex, 4>::random([3, 4, 5, 6], Distribution::Default, &device);
        let check = |t: Tensor<Flex, 4>, in_place: bool| {
            let want: Vec<f32> = t.clone().into_data().to_vec().unwrap();
            let h = HostFloats::new(t);
            assert_eq!(h.held.is_some(), in_place);
            assert_eq!(&h[..], &want[..]);
        };
        check(x.clone(), true);
        check(x.clone().slice([1..3, 0..4, 0..5, 0..6]), true);
        check(x.clone().slice([0..3, 1..3, 0..5, 0..6]), false);
        let nd = Tensor::<NdArray, 4>::from_data(x.clone().into_data(), &Default::default());
        let h = HostFloats::new(nd);
        assert!(h.held.is_none());
        assert_eq!(&h[..], &x.into_data().to_vec::<f32>().unwrap()[..]);
    }
}
