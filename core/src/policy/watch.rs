//! Hot reload: a debounced watcher on the policy directory that rebuilds and swaps the snapshot.
//!
//! The whole directory is watched recursively (never single files), so editors that save by
//! rename, `git checkout` of the whole tree and files deleted then re-created are all seen. Each
//! debounced batch triggers one reload on a blocking thread; the request path never waits for it.

use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::new_debouncer;
use tokio::sync::{mpsc, watch};

use super::{Policies, Reloaded};

/// Quiet time before a batch of file events triggers a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Why a reload ran.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    /// The file watcher saw changes.
    Files,
    /// `SIGHUP`.
    Signal,
    /// `POST /admin/policies/reload`.
    Admin,
}

/// Runs one reload off the async runtime and logs its outcome.
pub async fn reload(policies: &Arc<Policies>, trigger: Trigger) {
    let policies = policies.clone();
    let started = std::time::Instant::now();
    match tokio::task::spawn_blocking(move || policies.reload()).await {
        Ok(Ok(Reloaded::Swapped(snapshot))) => tracing::info!(
            ?trigger,
            generation = snapshot.generation,
            hash = %&snapshot.content_hash[..12],
            rules = snapshot.access_rules.len(),
            scripts = snapshot.routing.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "policies reloaded"
        ),
        Ok(Ok(Reloaded::Unchanged)) => tracing::debug!(?trigger, "policy files unchanged"),
        Ok(Err(errors)) => {
            for e in &errors {
                tracing::error!(?trigger, error = %e, "policy reload rejected; the previous set keeps serving");
            }
        }
        Err(e) => tracing::error!(error = %e, "policy reload task failed"),
    }
}

/// Whether a watcher event can change what a load reads: anything but a read access (a file
/// closed after writing is a change).
fn changes(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Watches the policy directory until `stop` flips.
pub async fn watch_dir(policies: Arc<Policies>, mut stop: watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let dir = policies.dir().to_path_buf();
    let debouncer = new_debouncer(
        DEBOUNCE,
        None,
        move |result: notify_debouncer_full::DebounceEventResult| {
            match result {
                // Reading a file is an event too (inotify's open and close-without-write): a reload
                // reads every file, so reacting to those reloaded the directory every debounce
                // period forever. Only changes count.
                Ok(events) if events.iter().any(|e| changes(&e.event.kind)) => {
                    // A full channel already holds a pending reload, which will see these changes.
                    let _ = tx.try_send(());
                }
                Ok(_) => {}
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(error = %e, "policy watcher error");
                    }
                    let _ = tx.try_send(());
                }
            }
        },
    );
    let mut debouncer = match debouncer {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the policy watcher; reload with SIGHUP");
            return;
        }
    };
    if let Err(e) = debouncer.watch(&dir, RecursiveMode::Recursive) {
        tracing::error!(error = %e, dir = %dir.display(), "cannot watch the policy directory; reload with SIGHUP");
        return;
    }
    tracing::info!(dir = %dir.display(), "watching the policy directory");
    loop {
        tokio::select! {
            received = rx.recv() => {
                if received.is_none() {
                    return;
                }
                reload(&policies, Trigger::Files).await;
            }
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, ModifyKind, RemoveKind};

    use super::*;

    #[test]
    fn reads_are_not_changes() {
        assert!(!changes(&EventKind::Access(AccessKind::Open(
            AccessMode::Read
        ))));
        assert!(!changes(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!changes(&EventKind::Access(AccessKind::Read)));
        assert!(changes(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(changes(&EventKind::Modify(ModifyKind::Data(
            DataChange::Content
        ))));
        assert!(changes(&EventKind::Create(CreateKind::File)));
        assert!(changes(&EventKind::Remove(RemoveKind::File)));
        assert!(changes(&EventKind::Any));
    }
}
