//! GPT-2's byte-level alphabet and SentencePiece's `<0xNN>` byte tokens.

use std::collections::HashMap;
use std::sync::OnceLock;


fn is_printable_byte(b: u32) -> bool {
    (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b)
}

/// GPT-2's `bytes_to_unicode`: byte -> char, and the reverse map.
fn byte_level_tables() -> &'static ([char; 256], HashMap<char, u8>) {
    static TABLES: OnceLock<([char; 256], HashMap<char, u8>)> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut to_char = ['\0'; 256];
        let mut n = 0u32;
        for b in 0..256u32 {
            to_char[b as usize] = if is_printable_byte(b) {
                char::from_u32(b).expect("latin-1 char")
            } else {
                n += 1;
                char::from_u32(255 + n).expect("latin extended char")
            };
        }
        let to_byte = to_char.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        (to_char, to_byte)
    })
}

/// The bytes a byte-level token spells, or `None` if it has a character outside the alphabet.
pub(super) fn byte_level_decode(token: &str) -> Option<Vec<u8>> {
    let (_, to_byte) = byte_level_tables();
    token.chars().map(|c| to_byte.get(&c).copied()).collect()
}

pub(super) fn byte_level_encode(bytes: &[u8]) -> String {
    let (to_char, _) = byte_level_tables();
    bytes.iter().map(|&b| to_char[b as usize]).collect()
}

/// `<0xNN>` byte-fallback token.
pub(super) fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
