//! Element-wise operations and normalisations on rows of host activations. Each row is computed
//! alone, in a fixed order, so a row's values never depend on how many rows are computed together.

/// x·σ(x) (SwiGLU's gate), in place.
pub fn silu(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x /= 1.0 + (-*x).exp());
}

/// The exact (erf) GELU, in place.
pub fn gelu(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = 0.5 * *x * (1.0 + erf(*x / std::f32::consts::SQRT_2)));
}

/// √(2/π), the tanh approximation's constant.
pub const GELU_TANH_C: f32 = 0.797_884_6;

/// The tanh approximation of GELU (`gelu_pytorch_tanh`), in place.
pub fn gelu_tanh(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = 0.5 * *x * (1.0 + (GELU_TANH_C * (*x + 0.044715 * *x * *x * *x)).tanh()));
}

/// RMSNorm of each consecutive slice of `w.len()` values: x / sqrt(mean(x²) + eps) · w.
pub fn rms_norm(data: &mut [f32], w: &[f32], eps: f64) {
    let width = w.len();
    assert!(width > 0 && data.len() % width == 0, "norm weight of {width} for {} values", data.len());
    for g in data.chunks_exact_mut(width) {
        let ms = g.iter().map(|x| x * x).sum::<f32>() / width as f32;
        let inv = 1.0 / (ms + eps as f32).sqrt();
        g.iter_mut().zip(w).for_each(|(x, w)| *x = *x * inv * w);
    }
}

/// LayerNorm of each row of `w.len()` values: (x − mean) / sqrt(var + eps) · w + b.
pub fn layer_norm(data: &mut [f32], w: &[f32], b: &[f32], eps: f64) {
    let cols = w.len();
    assert!(cols > 0 && b.len() == cols && data.len() % cols == 0, "layer norm of {} values with {cols} weights", data.len());
    for row in data.chunks_exact_mut(cols) {
        let mean = row.iter().sum::<f32>() / cols as f32;
        let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / cols as f32;
        let inv = 1.0 / (var + eps as f32).sqrt();
        for ((x, w), b) in row.iter_mut().zip(w).zip(b) {
            *x = (*x - mean) * inv * w + b;
        }
    }
}

/// Adds `b` to every row of `b.len()` values.
pub fn add_bias(data: &mut [f32], b: &[f32]) {
    assert!(!b.is_empty() && data.len() % b.len() == 0, "bias of {} for {} values", b.len(), data.len());
    data.chunks_exact_mut(b.len()).for_each(|row| row.iter_mut().zip(b).for_each(|(x, b)| *x += b));
}

/// erf(x) from Numerical Recipes' Chebyshev fit of erfc (fractional error < 1.2e-7: f32 rounding).
pub fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = 1.0
        - t * (-x * x - 1.265_512_2
            + t * (1.000_023_7
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06 + t * (0.278_868_07 + t * (-1.135_203_9 + t * (1.488_515_9 + t * (-0.822_152_2 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        y
    } else {
        -y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_accurate() {
        // erf(0.5) = 0.520499877813…, erf(1) = 0.842700792949…, erf(2) = 0.995322265018…
        for (x, want) in [(0.0f32, 0.0f64), (0.5, 0.520_499_877_813), (1.0, 0.842_700_792_949), (2.0, 0.995_322_265_018), (-1.0, -0.842_700_792_949)] {
            assert!((erf(x) as f64 - want).abs() < 2e-7, "erf({x}) = {}", erf(x));
        }
    }
}
