//! A fork-join pool for the CPU kernels, built for many tiny parallel regions.
//!
//! One decoding step of a small model is a few hundred matrix products of 20–300 µs each. Rayon
//! puts its idle workers to sleep within microseconds, so every product paid a futex wake-up and a
//! context switch (a quarter of SmolLM2's decode time). Here workers spin for a while after each
//! job, as llama.cpp's do, and only then park; the caller works on the job too.
//!
//! Work is split into `n` numbered chunks taken from a shared counter, so which thread computes a
//! chunk never changes its result: the kernels stay batch- and thread-invariant. The thread count
//! is rayon's current one (the CLI's `--threads`, or a runner's per-model pool). A caller that finds
//! the pool busy (another thread's job) or that is itself inside a job runs its chunks inline.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins (then yields, then parks) waiting for the next job.
const SPIN: Duration = Duration::from_micros(100);
const YIELD: Duration = Duration::from_millis(3);

/// One published job: run `f(i)` for every `i < n` not yet taken.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    /// Workers allowed to join (threads − 1).
    helpers: usize,
    panicked: AtomicBool,
}

impl Job<'_> {
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Relaxed);
            if i >= self.n {
                break;
            }
            if catch_unwind(AssertUnwindSafe(|| (self.f)(i))).is_err() {
                self.panicked.store(true, Relaxed);
            }
        }
    }
}

struct Worker {
    thread: Thread,
    sleeping: AtomicBool,
}

struct Pool {
    /// Bumped once per job; workers watch it.
    epoch: AtomicU64,
    /// The current job (type-erased `*const Job`), or null. Its caller clears it, then waits for
    /// `active` to drain before the job goes out of scope.
    job: AtomicPtr<()>,
    /// Workers between registering and leaving (they register *before* reading `job`).
    active: AtomicUsize,
    workers: Mutex<Vec<&'static Worker>>,
    /// One job at a time.
    busy: Mutex<()>,
}

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool { epoch: AtomicU64::new(0), job: AtomicPtr::new(std::ptr::null_mut()), active: AtomicUsize::new(0), workers: Mutex::new(Vec::new()), busy: Mutex::new(()) })
}

/// Runs `f(i)` for every `i` in `0..n` on up to `rayon::current_num_threads()` threads (the caller
/// included) and returns when all are done. A panic in `f` is re-raised here.
pub fn run(n: usize, f: impl Fn(usize) + Sync) {
    let threads = rayon::current_num_threads().min(n);
    if threads <= 1 || INSIDE.with(Cell::get) {
        (0..n).for_each(f);
        return;
    }
    let pool = pool();
    let Ok(_guard) = pool.busy.try_lock() else {
        (0..n).for_each(f);
        return;
    };
    let workers = pool.ensure_workers(threads - 1);
    let job = Job { f: &f, n, next: AtomicUsize::new(0), helpers: threads - 1, panicked: AtomicBool::new(false) };
    pool.job.store(&job as *const Job as *mut (), SeqCst);
    pool.epoch.fetch_add(1, SeqCst);
    for w in workers.iter().take(threads - 1) {
        if w.sleeping.load(SeqCst) {
            w.thread.unpark();
        }
    }
    INSIDE.with(|c| c.set(true));
    job.work();
    INSIDE.with(|c| c.set(false));
    // Every chunk is taken. Unpublish the job, then wait for the workers that registered before
    // that (some may still be finishing a chunk); later ones find no job and touch nothing.
    pool.job.store(std::ptr::null_mut(), SeqCst);
    let mut spins = 0u32;
    while pool.active.load(SeqCst) != 0 {
        // A worker preempted mid-chunk (a loaded machine) needs a core more than we need to spin.
        spins += 1;
        if spins < 4096 {
            std::hint::spin_loop();
        } else {
            thread::yield_now();
        }
    }
    if job.panicked.load(Relaxed) {
        panic!("a CPU kernel task panicked");
    }
}

impl Pool {
    /// The first `n` workers, starting any that do not exist yet.
    fn ensure_workers(&'static self, n: usize) -> Vec<&'static Worker> {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        while workers.len() < n {
            let index = workers.len();
            let (tx, rx) = std::sync::mpsc::channel();
            thread::Builder::new()
                .name(format!("specdec-kernel-{index}"))
                .spawn(move || {
                    let me: &'static Worker = Box::leak(Box::new(Worker { thread: thread::current(), sleeping: AtomicBool::new(false) }));
                    tx.send(me).expect("the pool waits for its worker");
                    self.serve(me, index);
                })
                .expect("spawning a kernel thread");
            workers.push(rx.recv().expect("a new kernel thread reports in"));
        }
        workers[..n].to_vec()
    }

    fn serve(&self, me: &Worker, index: usize) {
        INSIDE.with(|c| c.set(true));
        let mut seen = self.epoch.load(SeqCst);
        loop {
            let idle = Instant::now();
            let mut spins = 0u32;
            while self.epoch.load(Acquire) == seen {
                spins = spins.wrapping_add(1);
                if spins % 64 != 0 {
                    std::hint::spin_loop();
                    continue;
                }
                let waited = idle.elapsed();
                if waited < SPIN {
                    std::hint::spin_loop();
                } else if waited < YIELD {
                    thread::yield_now();
                } else {
                    me.sleeping.store(true, SeqCst);
                    if self.epoch.load(SeqCst) == seen {
                        thread::park();
                    }
                    me.sleeping.store(false, SeqCst);
                }
            }
            seen = self.epoch.load(Acquire);
            self.active.fetch_add(1, SeqCst);
            let ptr = self.job.load(SeqCst) as *const Job;
            // SAFETY: a non-null pointer read after registering stays valid until we leave: its
            // caller clears it and then waits for `active` to reach zero.
            if let Some(job) = unsafe { ptr.as_ref() } {
                if index < job.helpers {
                    job.work();
                }
            }
            self.active.fetch_sub(1, SeqCst);
        }
    }
}

/// Splits `data` into chunks of `chunk` elements (the last may be shorter) and runs `f(i, chunk_i)`
/// for each on the pool.
pub fn for_each_chunk_mut<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    assert!(chunk > 0);
    let len = data.len();
    let base = SendPtr(data.as_mut_ptr());
    run(len.div_ceil(chunk), |i| {
        let start = i * chunk;
        let n = chunk.min(len - start);
        // SAFETY: chunk i covers [start, start + n) of `data`, disjoint from every other chunk,
        // and `data` is borrowed mutably for the whole call.
        let part = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), n) };
        f(i, part);
    });
}

struct SendPtr<T>(*mut T);
// SAFETY: used only to hand out disjoint sub-slices (see `for_each_chunk_mut`).
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_once_on_any_thread_count() {
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                for n in [0usize, 1, 2, 7, 1000] {
                    let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                    run(n, |i| {
                        hits[i].fetch_add(1, Relaxed);
                    });
                    assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "{threads} threads, {n} chunks");
                    let mut data = vec![0usize; n];
                    for_each_chunk_mut(&mut data, 3, |c, part| part.iter_mut().enumerate().for_each(|(j, v)| *v = 3 * c + j));
                    assert_eq!(data, (0..n).collect::<Vec<_>>());
                }
            });
        }
    }

    #[test]
    fn concurrent_callers_and_nested_jobs_complete() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let total = AtomicUsize::new(0);
        pool.install(|| {
            thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap().install(|| {
                            for _ in 0..200 {
                                run(8, |_| {
                                    run(2, |_| {
                                        total.fetch_add(1, Relaxed);
                                    })
                                });
                            }
                        })
                    });
                }
            });
        });
        assert_eq!(total.load(Relaxed), 4 * 200 * 8 * 2);
    }

    #[test]
    fn a_panicking_task_is_reported_to_the_caller() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let result = pool.install(|| catch_unwind(|| run(16, |i| assert!(i != 5, "task 5 fails"))));
        assert!(result.is_err());
        // The pool still works afterwards.
        let n = AtomicUsize::new(0);
        pool.install(|| run(16, |_| {
            n.fetch_add(1, Relaxed);
        }));
        assert_eq!(n.load(Relaxed), 16);
    }
}
