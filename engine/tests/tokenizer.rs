use engine::gguf::Gguf;
use engine::tokenizer::*;
use std::time::Instant;

#[test]
fn explore() {
    for f in ["SmolLM2-135M-Instruct.Q4_1.gguf", "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf", "gemma-3-270m-q4_k_m.gguf"] {
        let g = Gguf::open(format!("/work/models/{f}")).unwrap();
        let t0 = Instant::now();
        let tok = Tokenizer::from_gguf(&g).unwrap();
        eprintln!("{f}: {:?} built in {:?}", tok, t0.elapsed());
        for s in ["Hello world! 123", "The capital of France is", "  multiple   spaces", "Café déjà vu. 日本語 🎉", "<|im_start|>user\nHi<|im_end|>\n", "<start_of_turn>user\nHi<end_of_turn>\n", "def f(x):\n    return x\n\n\n"] {
            let t0 = Instant::now();
            let ids = tok.encode(s, true).unwrap();
            let d = tok.decode(&ids).unwrap();
            eprintln!("  {s:?} -> {ids:?} ({:?}) -> {d:?}", t0.elapsed());
        }
        eprintln!("  fp {:x} eos {:?}", tok.vocab_fingerprint(), tok.eos_ids());
    }
}
