fn status(tag: &str) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let get = |k: &str| s.lines().find(|l| l.starts_with(k)).unwrap_or("").to_string();
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut gguf_rss = 0u64; let mut in_gguf = false; let mut anon = 0u64; let mut cur_anon = false;
    for l in smaps.lines() {
        if l.contains(".gguf") { in_gguf = true; cur_anon = false; continue; }
        if l.split_whitespace().count() >= 5 && l.contains('-') && !l.starts_with("Rss") && l.chars().next().map_or(false, |c| c.is_ascii_hexdigit()) { in_gguf = false; cur_anon = l.split_whitespace().count() == 5; continue; }
        if l.starts_with("Rss:") { let kb: u64 = l.split_whitespace().nth(1).unwrap().parse().unwrap(); if in_gguf { gguf_rss += kb } else if cur_anon { anon += kb } }
    }
    println!("{tag}: {} {} | gguf mapped {} kB | anon {} kB", get("VmRSS"), get("VmHWM"), gguf_rss, anon);
}
fn main() {
    let spec = std::env::args().nth(1).unwrap_or("smollm2-135m".into());
    status("start");
    let loaded = engine::load_model(&spec, &burn::tensor::Device::flex()).unwrap();
    status("loaded");
    let mut cache = loaded.model.new_cache(128).unwrap();
    let toks: Vec<u32> = (0..64).map(|i| 100 + i).collect();
    loaded.model.forward(&toks, &mut cache, engine::model::LogitRows::Last).unwrap();
    status("prefill");
    for i in 0..16 { loaded.model.forward(&[200 + i], &mut cache, engine::model::LogitRows::Last).unwrap(); }
    status("decode");
}
