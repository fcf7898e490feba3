//! Weights and biases: int8 symmetric per output channel (`s[c] = max |W_c| / 127`,
//! values in [-127, 127]) and int32 biases on the scale `s_x * s_w[c]` that an integer
//! convolution accumulates in. Rounding is half to even, as ONNX's QuantizeLinear rounds,
//! so the stored integers are what QuantizeLinear would give.

/// Per-channel int8 weights.
#[derive(Clone, Debug, PartialEq)]
pub struct QWeights {
    /// Values, in the float tensor's layout.
    pub values: Vec<i8>,
    /// One scale per channel of `axis` (> 0).
    pub scales: Vec<f32>,
}

/// Quantizes `w` (row-major, shape `dims`) symmetrically per slice along `axis`: channel
/// `c` gets `s[c] = max |W_c| / 127` (1 for an all-zero channel) and
/// `q = round(W / s[c])` clamped to [-127, 127]. Errors name the first value that is not
/// finite, or a shape that does not fit.
pub fn quantize_weights(w: &[f32], dims: &[usize], axis: usize) -> Result<QWeights, String> {
    let channels = *dims
        .get(axis)
        .ok_or_else(|| format!("axis {axis} of a {}-D tensor", dims.len()))?;
    let inner: usize = dims[axis + 1..].iter().product();
    let total: usize = dims.iter().product();
    if total != w.len() || channels == 0 {
        return Err(format!("{} values for shape {dims:?}", w.len()));
    }
    if let Some(v) = w.iter().find(|v| !v.is_finite()) {
        return Err(format!("weight value {v} is not finite"));
    }
    let channel = |i: usize| (i / inner) % channels;
    let mut max = vec![0f32; channels];
    for (i, v) in w.iter().enumerate() {
        let m = &mut max[channel(i)];
        *m = m.max(v.abs());
    }
    let scales: Vec<f32> = max
        .iter()
        .map(|&m| {
            let s = m / 127.0;
            if s >= f32::MIN_POSITIVE {
                s
            } else {
                1.0
            }
        })
        .collect();
    let values = w
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (v / scales[channel(i)])
                .round_ties_even()
                .clamp(-127.0, 127.0) as i8
        })
        .collect();
    Ok(QWeights { values, scales })
}

/// int32 biases of one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct QBias {
    /// `round(b[c] / scales[c])`, saturated to the int32 range.
    pub values: Vec<i32>,
    /// `s_x * s_w[c]` per channel (at least `f32::MIN_POSITIVE`).
    pub scales: Vec<f32>,
    /// Biases that did not fit in int32 and were saturated.
    pub clamped: usize,
}

/// Quantizes bias `b` of a layer whose input has scale `s_x` and whose weights have the
/// per-channel scales `s_w` (one per bias value).
pub fn quantize_bias(b: &[f32], s_x: f32, s_w: &[f32]) -> Result<QBias, String> {
    if b.len() != s_w.len() {
        return Err(format!(
            "{} bias values for {} output channels",
            b.len(),
            s_w.len()
        ));
    }
    if let Some(v) = b.iter().find(|v| !v.is_finite()) {
        return Err(format!("bias value {v} is not finite"));
    }
    let scales: Vec<f32> = s_w
        .iter()
        .map(|s| (s_x * s).max(f32::MIN_POSITIVE))
        .collect();
    let mut clamped = 0;
    let values = b
        .iter()
        .zip(&scales)
        .map(|(v, s)| {
            let q = (f64::from(*v) / f64::from(*s)).round_ties_even();
            if q > f64::from(i32::MAX) || q < f64::from(i32::MIN) {
                clamped += 1;
            }
            q.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
        })
        .collect();
    Ok(QBias {
        values,
        scales,
        clamped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_channels_largest_magnitude_maps_to_127() {
        // a [2, 1, 1, 3] conv weight, axis 0 (values chosen so every quotient is exact):
        // channel 0: max |w| = 31.75 = 127 / 4 -> s = 0.25; channel 1: 127 / 64 -> 1 / 64
        let w = [31.75, -12.625, 0.125, 0.0234375, -1.984375, 0.0];
        let q = quantize_weights(&w, &[2, 1, 1, 3], 0).unwrap();
        assert_eq!(q.scales, [0.25, 0.015625]);
        // by hand: 127, -50.5 -> -50 and 0.5 -> 0 (half to even); 1.5 -> 2, -127, 0
        assert_eq!(q.values, [127, -50, 0, 2, -127, 0]);
        // (one scale for the tensor, 0.25, would have left channel 1 as 0, -8, 0)
    }

    #[test]
    fn the_axis_picks_the_channel_slices() {
        // B [K = 2, M = 3] of a MatMul, per output column (axis 1): columns [127, -64],
        // [63.5, 0.25], [-63.5, 31.75] -> scales 1, 0.5, 0.5
        let w = [127.0, 63.5, -63.5, -64.0, 0.25, 31.75];
        let q = quantize_weights(&w, &[2, 3], 1).unwrap();
        assert_eq!(q.scales, [1.0, 0.5, 0.5]);
        // 127, 127, -127; -64, 0.5 -> 0, 63.5 -> 64
        assert_eq!(q.values, [127, 127, -127, -64, 0, 64]);
        // an all-zero channel gets scale 1 and zeros
        let q = quantize_weights(&[0.0, 0.0, 1.0, 1.0], &[2, 2], 0).unwrap();
        assert_eq!(q.scales, [1.0, 1.0 / 127.0]);
        assert_eq!(q.values, [0, 0, 127, 127]);
    }

    #[test]
    fn bad_weights_are_errors() {
        assert!(quantize_weights(&[1.0, f32::NAN], &[2], 0)
            .unwrap_err()
            .contains("NaN"));
        assert!(quantize_weights(&[1.0; 3], &[2, 2], 0).is_err());
        assert!(quantize_weights(&[1.0; 4], &[2, 2], 2).is_err());
    }

    #[test]
    fn biases_round_on_the_accumulator_scale() {
        // s_x = 0.5, s_w = [0.25, 0.125]: bias scales 0.125 and 0.0625
        let q = quantize_bias(&[0.3125, -1.0], 0.5, &[0.25, 0.125]).unwrap();
        assert_eq!(q.scales, [0.125, 0.0625]);
        // 2.5 -> 2 (half to even), -16
        assert_eq!(q.values, [2, -16]);
        assert_eq!(q.clamped, 0);
        // 3.5 -> 4, 0.5 -> 0
        let q = quantize_bias(&[0.4375, 0.03125], 0.5, &[0.25, 0.125]).unwrap();
        assert_eq!(q.values, [4, 0]);
        // a bias far beyond int32 on a tiny scale saturates and is counted
        let q = quantize_bias(&[1e6, -1e6], 1e-4, &[1e-4, 1e-4]).unwrap();
        assert_eq!(q.values, [i32::MAX, i32::MIN]);
        assert_eq!(q.clamped, 2);
        assert!(quantize_bias(&[1.0], 0.1, &[0.1, 0.2]).is_err());
        assert!(quantize_bias(&[f32::INFINITY], 0.1, &[0.1]).is_err());
    }
}
