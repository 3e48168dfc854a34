//! The epoch ticker: advances the engine's epoch every [`TICK`] while guest code may run, and
//! sleeps (parked, no timer) while none can.
//!
//! A plugin's time limit is a number of epoch ticks (`Store::set_epoch_deadline`), so the epoch
//! must advance whenever a guest runs. It need not advance otherwise: ticking every millisecond
//! for the gateway's whole life cost an idle governed gateway about 3% of a core (1,000 timer
//! wake-ups a second, each a VM exit on the machines we measure on; `docs/performance.md`).
//!
//! Whoever is about to run guest code (instantiate, `configure`, a phase call) holds a
//! [`Ticking`] guard for as long as it may run. The ticker parks once a whole tick has passed
//! with no guard held and none taken; taking a guard while it is parked unparks it. A deadline
//! set while the ticker was parked counts from the epoch it was left at, so a guest gets its
//! ticks (give or take one) either way. Under steady load guards are taken every tick, and the
//! ticker runs as it always did.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

/// How often the epoch advances while guests may run: the granularity of time limits.
pub const TICK: Duration = Duration::from_millis(1);

/// The shared state of one ticker thread and its guards.
#[derive(Debug, Default)]
pub(crate) struct Ticker {
    /// Guards alive.
    busy: AtomicUsize,
    /// A guard was dropped since the ticker last looked (one still held shows in `busy`), so
    /// a call that came and went within a tick keeps the ticker awake for one more.
    recent: AtomicBool,
    /// The ticker is parked (or about to park): a new guard must unpark it.
    parked: AtomicBool,
    /// The ticker thread, once started.
    thread: OnceLock<Thread>,
}

/// Keeps the epoch advancing while it is alive.
#[derive(Debug)]
#[must_use = "the epoch advances only while the guard is held"]
pub(crate) struct Ticking(Arc<Ticker>);

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.recent.store(true, Ordering::SeqCst);
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ticker {
    /// Starts a ticker thread named `name` that calls `tick` every [`TICK`] while a guard is
    /// held (and for a tick after the last one is dropped), until `tick` returns false.
    pub(crate) fn start(
        name: &str,
        mut tick: impl FnMut() -> bool + Send + 'static,
    ) -> std::io::Result<Arc<Ticker>> {
        let ticker = Arc::new(Ticker::default());
        let state = ticker.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while tick() {
                    std::thread::sleep(TICK);
                    state.park_while_idle();
                }
            })?;
        let _ = ticker.thread.set(handle.thread().clone());
        Ok(ticker)
    }

    /// A guard: the epoch advances until it is dropped.
    pub(crate) fn ticking(self: &Arc<Self>) -> Ticking {
        self.busy.fetch_add(1, Ordering::SeqCst);
        // Sequentially consistent on both sides: either this load sees `parked` (and unparks),
        // or the ticker's load of `busy` after setting `parked` sees this guard (and runs on).
        if self.parked.load(Ordering::SeqCst)
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
        Ticking(self.clone())
    }

    /// Whether the ticker thread is parked now.
    #[cfg(test)]
    fn is_parked(&self) -> bool {
        self.parked.load(Ordering::SeqCst) && self.busy.load(Ordering::SeqCst) == 0
    }

    /// On the ticker thread, after a tick: parks while no guard is held, once a whole tick has
    /// passed without one.
    fn park_while_idle(&self) {
        if self.recent.swap(false, Ordering::SeqCst) || self.busy.load(Ordering::SeqCst) > 0 {
            return;
        }
        self.parked.store(true, Ordering::SeqCst);
        // `park` may return spuriously, and an unpark that came first returns it at once.
        while self.busy.load(Ordering::SeqCst) == 0 {
            std::thread::park();
        }
        self.parked.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::time::Instant;

    use super::*;

    /// Waits (up to 5 s) until `cond` holds.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < until, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn counting() -> (Arc<Ticker>, Arc<AtomicU64>) {
        let ticks = Arc::new(AtomicU64::new(0));
        let counter = ticks.clone();
        let ticker = Ticker::start("test-epoch", move || {
            counter.fetch_add(1, Ordering::SeqCst);
            true
        })
        .expect("thread");
        (ticker, ticks)
    }

    #[test]
    fn an_idle_ticker_parks_and_a_guard_wakes_it() {
        let (ticker, ticks) = counting();
        eventually("the idle ticker parks", || ticker.is_parked());
        // Parked: no ticks while nothing runs.
        let parked_at = ticks.load(Ordering::SeqCst);
        std::thread::sleep(TICK * 20);
        assert_eq!(ticks.load(Ordering::SeqCst), parked_at);

        let guard = ticker.ticking();
        eventually("the guard's ticks arrive", || {
            ticks.load(Ordering::SeqCst) >= parked_at + 5
        });
        assert!(!ticker.is_parked());
        drop(guard);
        eventually("the ticker parks again", || ticker.is_parked());
    }

    #[test]
    fn guards_taken_and_dropped_from_many_threads_never_leave_a_holder_without_ticks() {
        let (ticker, ticks) = counting();
        // Each round waits for the ticker to park, then takes a guard from several threads at
        // once (racing the ticker's decision to park) and requires ticks while they are held.
        for _ in 0..20 {
            eventually("the ticker parks", || ticker.is_parked());
            let guards: Vec<_> = (0..4)
                .map(|_| {
                    let ticker = ticker.clone();
                    std::thread::spawn(move || ticker.ticking())
                })
                .map(|t| t.join().expect("guard thread"))
                .collect();
            let before = ticks.load(Ordering::SeqCst);
            eventually("a held guard gets ticks", || {
                ticks.load(Ordering::SeqCst) >= before + 2
            });
            drop(guards);
        }
    }

    #[test]
    fn the_ticker_stops_when_its_tick_says_so() {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ticker =
            Ticker::start("test-epoch-stop", move || !flag.load(Ordering::SeqCst)).expect("thread");
        let _guard = ticker.ticking();
        stop.store(true, Ordering::SeqCst);
        let thread = ticker.thread.get().expect("started").clone();
        eventually("the thread ends", || {
            // A finished thread's handle is gone; unparking it is harmless either way.
            thread.unpark();
            Arc::strong_count(&ticker) == 2
        });
    }
}
