//! Stopping a run cleanly on SIGINT or SIGTERM: the first signal only raises a flag that the runner
//! checks between units of work (a record is finished, never half written), and the run exits with
//! status 128 + the signal's number; a second signal exits at once — safe too, because every
//! record is already on disk whole.

use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

struct Flags {
    /// Set by the first signal; a second one, seeing it set, exits the process.
    stop: Arc<AtomicBool>,
    /// The signal that arrived last.
    signal: Arc<AtomicUsize>,
}

static FLAGS: OnceLock<Flags> = OnceLock::new();

/// Installs the handlers (once per process).
pub fn install() -> anyhow::Result<()> {
    if FLAGS.get().is_some() {
        return Ok(());
    }
    let flags = Flags { stop: Arc::new(AtomicBool::new(false)), signal: Arc::new(AtomicUsize::new(0)) };
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it runs before this signal sets `stop`: it exits only on a
        // second signal.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&flags.stop))?;
        signal_hook::flag::register_usize(sig, Arc::clone(&flags.signal), sig as usize)?;
        signal_hook::flag::register(sig, Arc::clone(&flags.stop))?;
    }
    let _ = FLAGS.set(flags);
    Ok(())
}

/// A run stopped by a signal between two records.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
}

impl Interrupted {
    /// The shell's convention for a process ended by a signal.
    pub fn exit_code(&self) -> i32 {
        128 + self.signal
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.signal {
            SIGINT => "SIGINT",
            SIGTERM => "SIGTERM",
            _ => "a signal",
        };
        write!(f, "interrupted by {name}")
    }
}

impl std::error::Error for Interrupted {}

/// `Err(Interrupted)` once a signal has arrived: call it between units of work.
pub fn check() -> Result<(), Interrupted> {
    match FLAGS.get() {
        Some(f) if f.stop.load(Ordering::SeqCst) => Err(Interrupted { signal: f.signal.load(Ordering::SeqCst) as i32 }),
        _ => Ok(()),
    }
}

/// The interruption somewhere in `e`'s chain of causes, if any.
pub fn find(e: &anyhow::Error) -> Option<&Interrupted> {
    e.chain().find_map(|c| c.downcast_ref::<Interrupted>())
}
