//! The shard rows by hand, and the mean of shard gradients against the same mean taken
//! tensor by tensor (Burn's own ops on each parameter's gradient).

use super::*;
use burn::backend::{Autodiff, Flex};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::TensorData;

type A = Autodiff<Flex>;

#[test]
fn shard_rows_cover_the_batch_evenly() {
    let p = Parallel::accumulating(3);
    let rows: Vec<_> = (0..3).map(|s| p.rows(10, s).unwrap()).collect();
    assert_eq!(rows, vec![0..4, 4..7, 7..10]);
    let rows: Vec<_> = (0..3).map(|s| p.rows(3, s).unwrap()).collect();
    assert_eq!(rows, vec![0..1, 1..2, 2..3]);
    assert_eq!(p.rows(2, 0), None);
    assert_eq!(Parallel::single().rows(5, 0), Some(0..5));
}

fn grads_of(lin: &Linear<A>, x: &[f32]) -> GradientsParams {
    let dev = Default::default();
    let n = x.len() / 3;
    let x = Tensor::<A, 2>::from_data(TensorData::new(x.to_vec(), [n, 3]), &dev);
    let loss = lin.forward(x).powi_scalar(2).mean();
    GradientsParams::from_grads(loss.backward(), lin)
}

fn values<const D: usize>(g: &GradientsParams, id: ParamId) -> Vec<f32> {
    g.get::<Flex, D>(id)
        .unwrap()
        .into_data()
        .iter::<f32>()
        .collect()
}

/// The gradients of `id` in `per`, added with Burn's tensor ops, divided by their count.
fn hand_mean<const D: usize>(per: &[GradientsParams], id: ParamId) -> Vec<f32> {
    per.iter()
        .map(|g| g.get::<Flex, D>(id).unwrap())
        .reduce(|a, b| a.add(b))
        .unwrap()
        .div_scalar(per.len() as f64)
        .into_data()
        .iter::<f32>()
        .collect()
}

#[test]
fn the_mean_of_shard_gradients_is_taken_parameter_by_parameter() {
    let _lock = crate::backward_lock();
    let dev = Default::default();
    let lin = LinearConfig::new(3, 2).init::<A>(&dev);
    let shards = [
        vec![1.0, 2.0, 3.0, -1.0, 0.5, 2.0],
        vec![0.0, -3.0, 1.0],
        vec![2.0, 2.0, -2.0, 1.0, 1.0, 1.0, 4.0, 0.0, -1.0],
    ];
    let per: Vec<GradientsParams> = shards.iter().map(|x| grads_of(&lin, x)).collect();
    let (w, b) = (lin.weight.id, lin.bias.as_ref().unwrap().id);
    // expected: each parameter's gradients added with Burn's tensor ops, divided by 3
    let (hand_w, hand_b) = (hand_mean::<2>(&per, w), hand_mean::<1>(&per, b));
    let mean = Parallel::accumulating(3).mean(&lin, per).unwrap();
    // the same f32 additions in the same order: equal to rounding (1e-6 relative)
    for (got, want) in [
        (values::<2>(&mean, w), hand_w),
        (values::<1>(&mean, b), hand_b),
    ] {
        assert_eq!(got.len(), want.len());
        for (g, h) in got.iter().zip(&want) {
            assert!((g - h).abs() <= 1e-6 * h.abs().max(1.0), "{g} vs {h}");
        }
    }
    // shapes are kept
    assert_eq!(mean.get::<Flex, 2>(w).unwrap().dims(), [3, 2]);
}

#[test]
fn shards_with_different_parameters_are_an_error() {
    let _lock = crate::backward_lock();
    let dev = Default::default();
    let lin = LinearConfig::new(3, 2).init::<A>(&dev);
    let full = grads_of(&lin, &[1.0, 2.0, 3.0]);
    let mut partial = grads_of(&lin, &[1.0, 2.0, 3.0]);
    partial.remove::<Flex, 1>(lin.bias.as_ref().unwrap().id);
    let err = Parallel::accumulating(2)
        .mean(&lin, vec![full, partial])
        .unwrap_err();
    assert!(err.to_string().contains("different parameters"), "{err}");
}

#[test]
fn one_shard_is_returned_as_it_is() {
    let _lock = crate::backward_lock();
    let dev = Default::default();
    let lin = LinearConfig::new(3, 2).init::<A>(&dev);
    let g = grads_of(&lin, &[1.0, 2.0, 3.0]);
    let want = values::<2>(&g, lin.weight.id);
    let got = Parallel::single().mean(&lin, vec![g]).unwrap();
    assert_eq!(values::<2>(&got, lin.weight.id), want);
}
