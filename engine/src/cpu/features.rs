//! Which instruction set the packed kernels use, decided at run time.
//!
//! Every path computes the same integers and the same f32 operations in the same order, so a
//! product's result is bitwise the same on every path (tested): the choice changes speed, never
//! output. `SPECDEC_ISA` (`portable`, `avx2`, `avx-vnni`, `avx512-vnni`) caps the choice, for
//! comparisons on one machine; a path the CPU lacks is never taken.

use std::sync::OnceLock;

/// Instruction sets with a kernel path, slowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Isa {
    /// Plain Rust: the reference every vector path is tested against.
    Portable,
    /// AVX2 + FMA + F16C: 8-bit products with `vpmaddubsw`, summed in 16 then 32 bits.
    Avx2,
    /// AVX2 + AVX-VNNI (Alder Lake and later): `vpdpbusd` on 256-bit registers (VEX).
    AvxVnni,
    /// AVX-512 VNNI with VL (Ice Lake, Sapphire Rapids, Zen 4): `vpdpbusd` on 256-bit registers
    /// (EVEX), with 32 vector registers.
    Avx512Vnni,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avx-vnni",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = || is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
            match self {
                Isa::Portable => true,
                Isa::Avx2 => avx2(),
                Isa::AvxVnni => avx2() && is_x86_feature_detected!("avxvnni"),
                Isa::Avx512Vnni => {
                    avx2()
                        && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vl")
                        && is_x86_feature_detected!("avx512vnni")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// The paths this CPU can run.
    pub fn supported_all() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.supported()).collect()
    }

    /// The path the kernels take: the fastest the CPU supports, capped by `SPECDEC_ISA` (decided
    /// once per process; an unknown name is reported and ignored).
    pub fn active() -> Isa {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let best = Isa::ALL.into_iter().rev().find(|i| i.supported()).unwrap_or(Isa::Portable);
            match std::env::var("SPECDEC_ISA") {
                Ok(name) if !name.is_empty() => match Isa::from_name(&name) {
                    Some(cap) => best.min(cap),
                    None => {
                        eprintln!("warning: SPECDEC_ISA={name:?} is none of portable, avx2, avx-vnni, avx512-vnni; using {}", best.name());
                        best
                    }
                },
                _ => best,
            }
        })
    }
}

/// The CPU's model name (`/proc/cpuinfo` on Linux), for records of where a figure was measured.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| info.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The vector features the kernels care about that this CPU has, space-separated.
pub fn cpu_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut have = Vec::new();
        macro_rules! check {
            ($($f:tt),*) => {$(if is_x86_feature_detected!($f) { have.push($f); })*};
        }
        check!("avx2", "fma", "f16c", "avxvnni", "avx512f", "avx512bw", "avx512vl", "avx512vnni");
        have.join(" ")
    }
    #[cfg(not(target_arch = "x86_64"))]
    String::new()
}
