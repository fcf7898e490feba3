//! A tensor's floats on the host, read in place where the backend allows it.

use std::any::Any;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;

/// The floats of a tensor in row-major order: read in place from a contiguous f32 flex
/// tensor (shared or not, at any offset; the tensor is kept alive, not copied), gathered row
/// by row from a strided 4-D flex view (a slice, a batch chunk, swapped axes), else a copy
/// of `into_data`. `into_data` on a tensor another node still holds copied it twice (once
/// to bytes, once more to align them), a tenth of a search step.
pub struct HostFloats<B: Backend> {
    held: Option<(B::FloatTensorPrimitive, usize, usize)>,
    copy: Vec<f32>,
}

impl<B: Backend> HostFloats<B> {
    /// The floats of `t`.
    pub fn new<const D: usize>(t: Tensor<B, D>) -> Self {
        let prim = t.into_primitive().tensor();
        if let Some(ft) = (&prim as &dyn Any).downcast_ref::<FlexTensor>() {
            if ft.dtype() == DType::F32 {
                let (layout, xs) = (ft.layout(), ft.storage::<f32>());
                if let Some((start, end)) = layout.contiguous_offsets() {
                    if xs.get(start..end).is_some() {
                        return Self {
                            held: Some((prim, start, end)),
                            copy: Vec::new(),
                        };
                    }
                } else if let Some(copy) = gather(xs, layout) {
                    return Self { held: None, copy };
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

    /// Whether the floats are read in place (not copied).
    pub fn in_place(&self) -> bool {
        self.held.is_some()
    }
}

/// The elements of a 4-D strided view with non-negative strides, row by row (a contiguous
/// row is one copy); `None` when the view is not 4-D or reaches outside `xs`.
fn gather(xs: &[f32], layout: &burn_flex::Layout) -> Option<Vec<f32>> {
    let (dims, strides) = (layout.shape(), layout.strides());
    if dims.num_dims() != 4 || !layout.has_positive_strides() {
        return None;
    }
    let d: [usize; 4] = std::array::from_fn(|i| dims[i]);
    let s: [usize; 4] = std::array::from_fn(|i| strides[i] as usize);
    let last = layout.start_offset() + (0..4).map(|i| d[i].saturating_sub(1) * s[i]).sum::<usize>();
    if d.contains(&0) || last >= xs.len() {
        return None;
    }
    let mut out = Vec::with_capacity(d.iter().product());
    for n in 0..d[0] {
        for c in 0..d[1] {
            for h in 0..d[2] {
                let row = layout.start_offset() + n * s[0] + c * s[1] + h * s[2];
                if s[3] == 1 {
                    out.extend_from_slice(&xs[row..row + d[3]]);
                } else {
                    out.extend((0..d[3]).map(|w| xs[row + w * s[3]]));
                }
            }
        }
    }
    Some(out)
}

impl<B: Backend> std::ops::Deref for HostFloats<B> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &self.held {
            Some((prim, start, end)) => {
                let ft = (prim as &dyn Any)
                    .downcast_ref::<FlexTensor>()
                    .expect("held only for flex tensors");
                &ft.storage::<f32>()[*start..*end]
            }
            None => &self.copy,
        }
    }
}

impl<B: Backend> AsRef<[f32]> for HostFloats<B> {
    fn as_ref(&self) -> &[f32] {
        self
    }
}

impl<B: Backend> std::fmt::Debug for HostFloats<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostFloats({} values)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Flex, NdArray};
    use burn::tensor::Distribution;

    /// In-place reads (whole tensor, a narrowed batch at an offset) and copies (a strided
    /// channel slice, NdArray) give the values `into_data` gives.
    #[test]
    fn host_floats_read_views_like_into_data() {
        let device = Default::default();
        let x = Tensor::<Flex, 4>::random([3, 4, 5, 6], Distribution::Default, &device);
        let check = |t: Tensor<Flex, 4>, in_place: bool| {
            let want: Vec<f32> = t.clone().into_data().to_vec().unwrap();
            let h = HostFloats::new(t);
            assert_eq!(h.in_place(), in_place);
            assert_eq!(&h[..], &want[..]);
        };
        check(x.clone(), true);
        check(x.clone().slice([1..3, 0..4, 0..5, 0..6]), true);
        check(x.clone().slice([0..3, 1..3, 0..5, 0..6]), false);
        let nd = Tensor::<NdArray, 4>::from_data(x.clone().into_data(), &Default::default());
        let h = HostFloats::new(nd);
        assert!(!h.in_place());
        assert_eq!(&h[..], &x.into_data().to_vec::<f32>().unwrap()[..]);
    }

    /// Views (a slice, a batch chunk at an offset, swapped axes with a non-unit inner
    /// stride) read the same floats as Burn's own copy of them.
    #[test]
    fn views_read_like_burn() {
        let dev = Default::default();
        let x = Tensor::<Flex, 4>::random([2, 3, 5, 6], Distribution::Normal(0.0, 1.0), &dev);
        let views = [
            x.clone().slice([0..2, 1..3, 1..5, 2..6]),
            x.clone().split(1, 0).pop().unwrap(),
            x.clone().swap_dims(2, 3),
            x.clone().swap_dims(2, 3).slice([1..2, 0..3, 1..4, 0..5]),
        ];
        for v in views {
            let want = v.clone().into_data().to_vec::<f32>().unwrap();
            assert_eq!(HostFloats::new(v).to_vec(), want);
        }
    }
}
