use engine::model::kernels::matmul_wt;
use std::time::Instant;
fn main() {
    for (inp, out) in [(576usize, 1536usize), (1536, 576), (576, 49152)] {
        let w: Vec<f32> = (0..inp * out).map(|i| (i % 97) as f32 * 0.01).collect();
        let x: Vec<f32> = (0..inp).map(|i| (i % 13) as f32 * 0.1).collect();
        for _ in 0..10 { std::hint::black_box(matmul_wt(&x, &w, 1, inp, out)); }
        let t = Instant::now(); let n = 200;
        for _ in 0..n { std::hint::black_box(matmul_wt(&x, &w, 1, inp, out)); }
        let dt = t.elapsed().as_secs_f64() / n as f64;
        println!("[1x{inp}]x[{inp}x{out}]: {:.1} us, {:.1} GB/s", dt * 1e6, (inp * out * 4) as f64 / dt / 1e9);
    }
}
