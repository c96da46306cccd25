//! The LCG the Python reference scripts (`tools/reference/*.py`) use to build their data,
//! replayed so the tests feed tl-eval the same numbers.

/// `n` uniforms in [0, 1) from the 64-bit LCG with Knuth's MMIX constants (top 53 bits).
pub fn lcg(seed: u64, n: usize) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}
