//! Dequantization of every supported GGML type against the Python `gguf` package
//! (`gguf.quants.dequantize`) on blocks taken from real model files (or quantized by `gguf`
//! where no model here has the type). Fixtures: scripts/make_dequant_fixtures.py.

mod common;

use common::{fixtures, read_json};
use engine::gguf::{dequantize, GgmlType};

const TYPES: &[&str] = &["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"];

#[test]
fn every_type_matches_the_gguf_reference() {
    let dir = fixtures().join("dequant");
    for name in TYPES {
        let meta = read_json(&dir.join(format!("{name}.json")));
        let raw = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
        let id = meta["ggml_type_id"].as_u64().unwrap() as u32;
        let ty = GgmlType::from_id(id).unwrap_or_else(|| panic!("{name}: type id {id} unsupported"));
        assert_eq!(ty.name(), *name);
        let want: Vec<f32> = meta["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let mut got = vec![0f32; want.len()];
        dequantize(ty, &raw, &mut got).unwrap();
        let mut worst = 0f32;
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            // The reference computes in numpy f32 with a different operation order: allow one or
            // two ulps, never more.
            let tol = 2.0 * f32::EPSILON * b.abs().max(1e-30);
            assert!((a - b).abs() <= tol, "{name}[{i}]: got {a}, reference {b}");
            worst = worst.max((a - b).abs());
        }
        eprintln!("{name}: {} values from {}, max |Δ| = {worst:e}", want.len(), meta["source"]);
    }
}

#[test]
fn wrong_byte_counts_are_errors_not_panics() {
    let mut out = vec![0f32; 256];
    assert!(dequantize(GgmlType::Q4K, &[0u8; 143], &mut out).is_err());
    assert!(dequantize(GgmlType::Q4_0, &[0u8; 18 * 8], &mut out).is_ok());
    let mut odd = vec![0f32; 33];
    assert!(dequantize(GgmlType::Q8_0, &[0u8; 68], &mut odd).is_err());
}
