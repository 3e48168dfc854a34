//! Connection threads: each accepted connection is served, start to end, by one thread running
//! its own single-threaded tokio runtime (the model of nginx's workers and pingora's no-steal
//! runtimes).
//!
//! On the shared work-stealing runtime a request hopped between workers: the worker whose
//! epoll saw the client's bytes queued the connection's task and woke a parked worker to steal
//! it, and the upstream answer arrived on whichever worker held the IO driver. On the 2-core
//! bench the futex wake-ups, condvar parks and context switches of that hand-off were about a
//! fifth of the gateway's CPU (`docs/performance.md`, "Fourth round"). Here a connection's
//! socket is registered with its thread's own reactor, the tasks it spawns (the call task, HTTP/2
//! streams, the upstream connection's task) run on the same thread, and each thread has its own
//! upstream connection pool ([`crate::upstream::use_thread_client`]), so a request touches one
//! thread from its first byte to its last.
//!
//! The gateway's other work (accepting, the usage writer, the policy watcher, the ledger's
//! lease keeper) stays on the main multi-thread runtime. A new connection goes to the thread
//! with the fewest open connections. `tollgate serve --connection-threads 0` serves connections
//! on the main runtime instead (work stealing evens out a few very busy HTTP/2 connections).
//!
//! Each thread keeps a timer due within a second ([`TIMER_FLOOR`]), so that registering a
//! request's deadlines does not wake its own driver.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How far ahead each connection thread always has a timer due.
///
/// tokio's time driver sleeps until its earliest timer, and a thread with no timer sleeps until
/// woken. Registering a timer due before that (any timer, when there was none) wakes the driver
/// to shorten its sleep: an `eventfd` write, then an `epoll_wait` that returns at once. A
/// request registers its provider deadlines while its thread has nothing else timed, so each
/// request paid that pair of system calls (one `eventfd` write per request under `strace`). With
/// a timer always due within this floor, deadlines further away (provider timeouts are seconds)
/// are registered without waking anything; the floor costs one wake-up per second per thread.
const TIMER_FLOOR: Duration = Duration::from_secs(1);

/// The connection threads of one `serve`.
pub struct ConnectionThreads {
    threads: Vec<Worker>,
    /// The runtime that started them (accepting and everything but connections).
    main: Handle,
}

struct Worker {
    handle: Handle,
    open: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Counts a connection as open on its thread until dropped.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionThreads {
    /// Starts `count` threads (at least one), each with its own single-threaded runtime and
    /// upstream client.
    /// Call it on the main runtime.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let main = Handle::try_current().map_err(std::io::Error::other)?;
        let mut threads = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("tollgate-conn-{index}"))
                .spawn(move || {
                    crate::upstream::use_thread_client();
                    // Tasks spawned on this runtime run only while it is blocked on here.
                    runtime.block_on(async {
                        // A timer always due within TIMER_FLOOR (module docs).
                        let mut floor = tokio::time::interval(TIMER_FLOOR);
                        floor.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        tokio::pin!(stopped);
                        loop {
                            tokio::select! {
                                _ = &mut stopped => break,
                                _ = floor.tick() => {}
                            }
                        }
                    });
                })?;
            threads.push(Worker {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Self { threads, main })
    }

    /// The runtime of the thread with the fewest open connections, and the slot that counts the
    /// new connection there until it is dropped.
    pub fn pick(&self) -> Option<(Handle, Slot)> {
        let worker = self
            .threads
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))?;
        worker.open.fetch_add(1, Ordering::Relaxed);
        Some((worker.handle.clone(), Slot(worker.open.clone())))
    }

    /// Tasks alive on the main runtime and the connection threads' runtimes.
    pub fn alive_tasks(&self) -> usize {
        self.main.metrics().num_alive_tasks()
            + self
                .threads
                .iter()
                .map(|w| w.handle.metrics().num_alive_tasks())
                .sum::<usize>()
    }

    /// Open connections per thread.
    pub fn open_connections(&self) -> Vec<usize> {
        self.threads
            .iter()
            .map(|w| w.open.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops the threads; tasks still pending on them are dropped with their runtimes. Call it
    /// once every connection has ended and the usage records are flushed.
    pub async fn stop(mut self) {
        let joins: Vec<_> = self
            .threads
            .iter_mut()
            .filter_map(|w| {
                if let Some(stop) = w.stop.take() {
                    let _ = stop.send(());
                }
                w.thread.take()
            })
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for join in joins {
                let _ = join.join();
            }
        })
        .await;
    }
}

impl Drop for ConnectionThreads {
    fn drop(&mut self) {
        // Not stopped explicitly (an early return): let the threads end on their own.
        for worker in &mut self.threads {
            if let Some(stop) = worker.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

/// The connection threads of the running gateway, for `/metrics`.
static CURRENT: std::sync::RwLock<Option<Arc<ConnectionThreads>>> = std::sync::RwLock::new(None);

/// Publishes `threads` as the running gateway's (for [`alive_tasks`]); `None` clears it.
pub fn publish(threads: Option<Arc<ConnectionThreads>>) {
    if let Ok(mut current) = CURRENT.write() {
        *current = threads;
    }
}

/// Open connections per connection thread of the running gateway (`None` without them).
pub fn open_connections() -> Option<Vec<usize>> {
    CURRENT
        .read()
        .ok()
        .and_then(|c| c.as_ref().map(|t| t.open_connections()))
}

/// Tasks alive in the running gateway: on its main runtime and its connection threads (the
/// current runtime's alone when connections run on it).
pub fn alive_tasks() -> usize {
    CURRENT
        .read()
        .ok()
        .and_then(|c| c.as_ref().map(|t| t.alive_tasks()))
        .unwrap_or_else(|| Handle::current().metrics().num_alive_tasks())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_go_to_the_least_busy_thread_and_run_there() {
        let Ok(threads) = ConnectionThreads::start(2) else {
            panic!("threads did not start");
        };
        let Some((first, a)) = threads.pick() else {
            panic!("no thread");
        };
        let Some((second, b)) = threads.pick() else {
            panic!("no thread");
        };
        assert_eq!(threads.open_connections(), vec![1, 1]);
        // Each runs its tasks on its own named thread, and tasks it spawns stay there.
        let name = |handle: &Handle| {
            handle.spawn(async {
                let outer = std::thread::current().name().map(str::to_owned);
                let inner =
                    tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
                        .await
                        .ok()
                        .flatten();
                (outer, inner)
            })
        };
        let (Ok((x, x_inner)), Ok((y, y_inner))) = (name(&first).await, name(&second).await) else {
            panic!("tasks failed");
        };
        assert_eq!(x.as_deref(), Some("tollgate-conn-0"));
        assert_eq!(x_inner.as_deref(), Some("tollgate-conn-0"));
        assert_eq!(y.as_deref(), Some("tollgate-conn-1"));
        assert_eq!(y_inner.as_deref(), Some("tollgate-conn-1"));
        drop(a);
        assert_eq!(threads.open_connections(), vec![0, 1]);
        let Some((third, _c)) = threads.pick() else {
            panic!("no thread");
        };
        let Ok((z, _)) = name(&third).await else {
            panic!("task failed");
        };
        assert_eq!(z.as_deref(), Some("tollgate-conn-0"), "the emptier thread");
        drop(b);
        threads.stop().await;
        assert!(
            first.spawn(async {}).await.is_err(),
            "a stopped thread runs nothing"
        );
    }
}
