//! Stage 4, reserve: hold the worst-case cost on every applicable budget and the estimated
//! usage on every applicable quota, atomically, before anything goes upstream.
//!
//! The estimate is [`crate::spend::estimate`]'s (real tokenizer for the prompt, `max_tokens` or
//! the model's `max_output_tokens` for the answer, the highest prices of any deployment). A
//! budget that cannot hold it answers 402 `budget_exceeded`; a full quota 429 `quota_exceeded`
//! or `rate_limit_exceeded` with `Retry-After`; an unreachable store 503 `budget_unavailable`
//! (fail closed: nothing is sent upstream unbudgeted). The holds travel with the request's
//! recorder and are settled with the real usage when it is recorded — also after an upstream
//! failure (nothing billed) or a client disconnect (what was produced is billed).

use std::sync::Arc;

use super::authorize::Authorized;
use super::{Flow, Recorder};
use crate::policy::Snapshot;
use crate::spend::estimate::estimate;
use crate::state::AppState;
use crate::store::KeyRecord;

/// Runs the reserve stage; on success the holds are attached to `recorder`.
pub async fn run(
    app: &Arc<AppState>,
    snapshot: &Snapshot,
    key: &KeyRecord,
    request: &Authorized,
    recorder: &mut Recorder,
) -> Flow<()> {
    if snapshot.budgets.is_empty() && snapshot.quotas.is_empty() && !app.ledger.has_stored_budgets()
    {
        return Flow::Continue(());
    }
    let estimate = estimate(&request.budget_view(), request.target.max_output_tokens());
    match app
        .ledger
        .reserve(
            snapshot,
            key,
            &request.target,
            estimate,
            recorder.request_id(),
        )
        .await
    {
        Ok(None) => Flow::Continue(()),
        Ok(Some(reservation)) => {
            recorder.add_decisions(vec![reservation.decision()]);
            recorder.attach_reservation(app.ledger.clone(), reservation);
            Flow::Continue(())
        }
        Err(error) => Flow::Respond(error),
    }
}
