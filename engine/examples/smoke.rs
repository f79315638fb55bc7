use engine::model::LogitRows;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let device = burn::tensor::Device::flex();
    let loaded = engine::load_files(engine::source::ModelFiles::Gguf(path.into()), &device).unwrap();
    let m = loaded.model.as_ref();
    let prompt = loaded.tokenizer.encode("The capital of France is Paris, and the capital of", false).unwrap();
    let n = prompt.len();
    for k1 in [1usize, 2, 4, 5, 8] {
        let split = n - k1;
        let mut c1 = m.new_cache(64).unwrap();
        m.forward(&prompt[..split], &mut c1, LogitRows::Last).unwrap();
        let batch = m.forward(&prompt[split..], &mut c1, LogitRows::All).unwrap();
        let mut c2 = m.new_cache(64).unwrap();
        m.forward(&prompt[..split], &mut c2, LogitRows::Last).unwrap();
        let mut maxd = 0f32; let mut identical = 0;
        for i in 0..k1 {
            let single = m.forward(&prompt[split + i..split + i + 1], &mut c2, LogitRows::All).unwrap();
            let d = batch.row(i).iter().zip(single.row(0)).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            if batch.row(i) == single.row(0) { identical += 1; }
            maxd = maxd.max(d);
        }
        println!("rows {k1}: {identical}/{k1} bitwise identical, max diff {maxd:e}");
    }
}
