//! The epoch ticker: advances the engine's epoch when a guest call in flight reaches its time
//! limit, and at no other time.
//!
//! A guest call's store traps at the first epoch increment after its wall-clock deadline
//! (`Store::set_epoch_deadline(1)` with a callback that compares the clock with the deadline,
//! [`super::host::guest_store`]). So the epoch need not advance at a fixed rate: only when some
//! call is overdue. Ticking every millisecond while any guest ran (as it did) cost the governed
//! gateway about 900 wake-ups a second under load, 1.3% of its CPU, each wake-up a chance to
//! preempt a connection thread; guardrail calls take microseconds against limits of tens of
//! milliseconds, so almost every one of those ticks found nothing to stop.
//!
//! Whoever is about to run guest code (instantiate, `configure`, a phase call) holds a
//! [`Ticking`] guard with the call's deadline for as long as it may run. The ticker thread
//! sleeps until the earliest deadline held, and parks (no timer) while no guard is held. A guard
//! whose deadline is earlier than the one the ticker sleeps towards wakes it; every other guard
//! is taken and dropped without a system call. When the earliest deadline has passed, the ticker
//! advances the epoch, then looks again no sooner than [`TICK`] later (a call that is overdue but
//! inside a host call does not check the epoch until it returns; the ticker does not spin
//! meanwhile). A call therefore traps within about [`TICK`] of its limit, as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// The least time between two epoch increments: the granularity of time limits once a call is
/// overdue.
pub const TICK: Duration = Duration::from_millis(1);

/// "Not sleeping towards any deadline" (parked).
const NEVER: u64 = u64::MAX;

/// The shared state of one ticker thread and its guards.
#[derive(Debug)]
pub(crate) struct Ticker {
    /// The deadlines of the guards alive, by guard id.
    deadlines: Mutex<Vec<(u64, Instant)>>,
    /// The next guard id.
    next_id: AtomicU64,
    /// What the ticker thread sleeps towards, in nanoseconds after `origin` ([`NEVER`] while
    /// parked). A guard with an earlier deadline unparks it.
    wake_at: AtomicU64,
    /// Epoch increments so far (for tests and metrics).
    increments: AtomicU64,
    origin: Instant,
    /// The ticker thread, once started.
    thread: OnceLock<Thread>,
}

/// Keeps its deadline watched while it is alive.
#[derive(Debug)]
#[must_use = "the deadline is watched only while the guard is held"]
pub(crate) struct Ticking {
    ticker: Arc<Ticker>,
    id: u64,
}

impl Drop for Ticking {
    fn drop(&mut self) {
        let mut deadlines = self
            .ticker
            .deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = deadlines.iter().position(|(id, _)| *id == self.id) {
            deadlines.swap_remove(at);
        }
    }
}

impl Ticker {
    /// Starts a ticker thread named `name` that calls `tick` whenever a guard's deadline has
    /// passed (at most once per [`TICK`]), until `tick` returns false.
    pub(crate) fn start(
        name: &str,
        mut tick: impl FnMut() -> bool + Send + 'static,
    ) -> std::io::Result<Arc<Ticker>> {
        let ticker = Arc::new(Ticker {
            deadlines: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            wake_at: AtomicU64::new(NEVER),
            increments: AtomicU64::new(0),
            origin: Instant::now(),
            thread: OnceLock::new(),
        });
        let state = ticker.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // No increment before this (at most one per TICK).
                let mut next_allowed = Instant::now();
                loop {
                    let earliest = state.earliest();
                    let now = Instant::now();
                    match earliest {
                        Some(deadline) if deadline <= now => {
                            if now >= next_allowed {
                                state.increments.fetch_add(1, Ordering::Relaxed);
                                if !tick() {
                                    return;
                                }
                                next_allowed = now + TICK;
                            }
                            state.sleep_until(next_allowed, deadline);
                        }
                        Some(deadline) => state.sleep_until(deadline.max(next_allowed), deadline),
                        None => state.sleep_until_needed(),
                    }
                }
            })?;
        let _ = ticker.thread.set(handle.thread().clone());
        Ok(ticker)
    }

    /// A guard for a call that must end by `deadline`: the epoch advances once it has passed
    /// (while the guard is held).
    pub(crate) fn ticking(self: &Arc<Self>, deadline: Instant) -> Ticking {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, deadline));
        // Sequentially consistent on both sides: either this load sees what the ticker sleeps
        // towards (and wakes it when this deadline is earlier), or the ticker's look at the
        // deadlines after publishing it sees this one.
        if self.nanos(deadline) < self.wake_at.load(Ordering::SeqCst)
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
        Ticking {
            ticker: self.clone(),
            id,
        }
    }

    /// Epoch increments so far.
    #[cfg(test)]
    pub(crate) fn increments(&self) -> u64 {
        self.increments.load(Ordering::Relaxed)
    }

    /// Whether the ticker thread is parked with no deadline to watch.
    #[cfg(test)]
    fn is_parked(&self) -> bool {
        self.wake_at.load(Ordering::SeqCst) == NEVER && self.earliest().is_none()
    }

    fn earliest(&self) -> Option<Instant> {
        self.deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(_, deadline)| *deadline)
            .min()
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(NEVER - 1)
    }

    /// On the ticker thread: sleeps until `until`, or until a guard with an earlier deadline
    /// wakes it. `known` is the earliest deadline the ticker saw before deciding to sleep.
    fn sleep_until(&self, until: Instant, known: Instant) {
        self.wake_at.store(self.nanos(until), Ordering::SeqCst);
        // A guard taken before the store above compared its deadline with the older value;
        // look again so that a deadline earlier than the one planned around is not slept
        // through. (Comparing with `until` instead would never sleep while a call is overdue:
        // its deadline is before `until`, and the ticker would spin.)
        if self.earliest().is_some_and(|earliest| earliest < known) {
            return;
        }
        let now = Instant::now();
        if until > now {
            // `park_timeout` may return early (spuriously, or unparked); the loop looks again.
            std::thread::park_timeout(until - now);
        }
    }

    /// On the ticker thread: parks until a guard is taken.
    fn sleep_until_needed(&self) {
        self.wake_at.store(NEVER, Ordering::SeqCst);
        if self.earliest().is_some() {
            return;
        }
        // `park` may return spuriously, and an unpark that came first returns it at once.
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

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
    fn calls_within_their_limit_never_advance_the_epoch() {
        let (ticker, ticks) = counting();
        eventually("the idle ticker parks", || ticker.is_parked());
        for _ in 0..50 {
            let guard = ticker.ticking(Instant::now() + Duration::from_millis(200));
            std::thread::sleep(Duration::from_micros(200));
            drop(guard);
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(ticks.load(Ordering::SeqCst), 0, "no call was overdue");
        assert_eq!(ticker.increments(), 0);
        assert!(ticker.is_parked());
    }

    #[test]
    fn an_overdue_call_gets_increments_from_its_deadline_until_it_ends() {
        let (ticker, ticks) = counting();
        eventually("the idle ticker parks", || ticker.is_parked());
        let start = Instant::now();
        let limit = Duration::from_millis(30);
        let guard = ticker.ticking(start + limit);
        eventually("the overdue call's first increment", || {
            ticks.load(Ordering::SeqCst) >= 1
        });
        assert!(start.elapsed() >= limit, "no increment before the deadline");
        eventually("more increments while it stays overdue", || {
            ticks.load(Ordering::SeqCst) >= 4
        });
        drop(guard);
        eventually("the ticker parks again", || ticker.is_parked());
        let parked_at = ticks.load(Ordering::SeqCst);
        std::thread::sleep(TICK * 20);
        assert!(ticks.load(Ordering::SeqCst) <= parked_at + 1);
    }

    #[test]
    fn a_call_that_stays_overdue_gets_at_most_one_increment_per_tick() {
        let (ticker, ticks) = counting();
        let start = Instant::now();
        // Overdue from the start, held like a call stuck in a host function.
        let guard = ticker.ticking(start);
        std::thread::sleep(Duration::from_millis(100));
        let counted = ticks.load(Ordering::SeqCst);
        let elapsed = start.elapsed();
        drop(guard);
        assert!(counted >= 1, "the overdue call got no increment");
        // The ticker sleeps a whole TICK after each increment, so there can be no more than
        // one per TICK elapsed (plus the first); a ticker that spun counted millions.
        let most = elapsed.as_micros() / TICK.as_micros() + 1;
        assert!(
            u128::from(counted) <= most,
            "{counted} increments in {elapsed:?} (at most {most})"
        );
    }

    #[test]
    fn an_earlier_deadline_wakes_a_ticker_sleeping_towards_a_later_one() {
        let (ticker, ticks) = counting();
        let _late = ticker.ticking(Instant::now() + Duration::from_secs(60));
        // Let the ticker go to sleep towards the late deadline.
        std::thread::sleep(Duration::from_millis(20));
        let _soon = ticker.ticking(Instant::now() + Duration::from_millis(10));
        eventually("the earlier deadline's increment", || {
            ticks.load(Ordering::SeqCst) >= 1
        });
    }

    #[test]
    fn guards_taken_from_many_threads_never_leave_an_overdue_call_without_increments() {
        let (ticker, ticks) = counting();
        // Each round waits for the ticker to park, then takes guards that are already overdue
        // from several threads at once (racing the ticker's decision to park) and requires
        // increments while they are held.
        for _ in 0..20 {
            eventually("the ticker parks", || ticker.is_parked());
            let guards: Vec<_> = (0..4)
                .map(|_| {
                    let ticker = ticker.clone();
                    std::thread::spawn(move || ticker.ticking(Instant::now()))
                })
                .map(|t| t.join().expect("guard thread"))
                .collect();
            let before = ticks.load(Ordering::SeqCst);
            eventually("an overdue guard gets increments", || {
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
        stop.store(true, Ordering::SeqCst);
        let _guard = ticker.ticking(Instant::now());
        let thread = ticker.thread.get().expect("started").clone();
        eventually("the thread ends", || {
            // A finished thread's handle is gone; unparking it is harmless either way.
            thread.unpark();
            Arc::strong_count(&ticker) == 2
        });
    }
}
