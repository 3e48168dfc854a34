//! Stage 4, reserve: bound the request's output, then hold the worst-case cost on every
//! applicable budget and the estimated usage on every applicable quota, atomically, before
//! anything goes upstream.
//!
//! Bounds come first and apply with or without budgets: an output limit (`max_tokens`,
//! `max_completion_tokens`, `max_output_tokens`, Gemini's `maxOutputTokens`) that is not a
//! positive integer or exceeds the model's maximum, an `n` that is not a positive integer, or an
//! image size the model has no price for, is a 400 `invalid_request`.
//!
//! The estimate is [`crate::spend::estimate`]'s: the prompt bounded by its length in bytes
//! (no tokenizer run; if that bound does not fit, the prompt is counted with the tokenizer and
//! held again, so a close budget is judged on the real count), the output limit or the model's
//! `max_output_tokens` per completion times `n`, the highest prices of any deployment, plus
//! per-image prices. A budget that cannot hold it answers 402
//! `budget_exceeded`; a full quota 429 `quota_exceeded` or `rate_limit_exceeded` with
//! `Retry-After`; an unreachable store 503 `budget_unavailable` (fail closed: nothing is sent
//! upstream unbudgeted). Once held, the output cap that was held is written into the upstream
//! request ([`crate::spend::cap::inject_output_cap`]), so the real cost cannot exceed the hold.
//! The holds travel with the request's recorder and are settled with the real usage when it is
//! recorded — also after an upstream failure (nothing billed) or a client disconnect (the call
//! finishes detached and is billed what it used).

use std::sync::Arc;

use super::authorize::Authorized;
use super::{Endpoint, Flow, Recorder};
use crate::error::{GatewayError, RequestError};
use crate::policy::Snapshot;
use crate::spend::cap::{self, CapFamily};
use crate::spend::estimate::{Estimate, estimate, estimate_bound};
use crate::spend::image;
use crate::state::AppState;
use crate::store::KeyRecord;

/// The output-limit family of an endpoint (`None`: the endpoint produces no text tokens).
pub fn cap_family(endpoint: Endpoint) -> Option<CapFamily> {
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Unified => Some(CapFamily::OpenAiChat),
        Endpoint::Completions => Some(CapFamily::OpenAiCompletions),
        Endpoint::Responses => Some(CapFamily::OpenAiResponses),
        Endpoint::Messages => Some(CapFamily::Anthropic),
        Endpoint::GeminiGenerate | Endpoint::GeminiStream => Some(CapFamily::Gemini),
        Endpoint::Vllm(route) => match route.upstream {
            "/v1/chat/completions" => Some(CapFamily::OpenAiChat),
            "/v1/completions" => Some(CapFamily::OpenAiCompletions),
            "/v1/responses" => Some(CapFamily::OpenAiResponses),
            _ => None,
        },
        Endpoint::Embeddings
        | Endpoint::ImagesGenerations
        | Endpoint::CountTokens
        | Endpoint::GeminiCountTokens
        | Endpoint::GeminiEmbed
        | Endpoint::GeminiBatchEmbed => None,
    }
}

fn invalid(message: String) -> Flow<()> {
    Flow::Respond(GatewayError::from(RequestError::Invalid(message)))
}

/// Runs the reserve stage; on success the holds are attached to `recorder` and the held output
/// cap is written into the request body.
pub async fn run(
    app: &Arc<AppState>,
    snapshot: &Snapshot,
    key: &KeyRecord,
    endpoint: Endpoint,
    request: &mut Authorized,
    recorder: &mut Recorder,
) -> Flow<()> {
    let family = cap_family(endpoint);
    let (requested, completions) = match family {
        Some(family) => {
            let requested = match cap::requested_output(
                family,
                request.body(),
                request.target.output_limit(),
            ) {
                Ok(requested) => requested,
                Err(message) => return invalid(message),
            };
            match family.completions(request.body()) {
                Ok(n) => (requested, n),
                Err(message) => return invalid(message),
            }
        }
        None => (None, 1),
    };
    let mut image_nanos = 0_i64;
    if endpoint == Endpoint::ImagesGenerations {
        let prices = request.target.image_pricing();
        let (size, quality) = image::requested(request.body());
        recorder.set_image_request(size.clone(), quality.clone());
        if !prices.is_empty() {
            let Some(per_image) = prices.price(&size, quality.as_deref()) else {
                return invalid(format!(
                    "this model has no price for images of size '{size}'{}",
                    quality
                        .map(|q| format!(" and quality '{q}'"))
                        .unwrap_or_default()
                ));
            };
            let n = match cap::positive_count(request.body(), "n") {
                Ok(n) => n,
                Err(message) => return invalid(message),
            };
            image_nanos = per_image.saturating_mul(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    if snapshot.budgets.is_empty() && snapshot.quotas.is_empty() && !app.ledger.has_stored_budgets()
    {
        return Flow::Continue(());
    }
    let default_cap = u64::try_from(request.target.max_output_tokens()).unwrap_or(0);
    let per_completion = requested.unwrap_or(default_cap);
    let complete = |mut estimate: Estimate| {
        estimate.fixed_nanos = image_nanos;
        if family.is_some() {
            estimate.output_tokens = i64::try_from(per_completion)
                .unwrap_or(i64::MAX)
                .saturating_mul(i64::try_from(completions).unwrap_or(i64::MAX));
        }
        estimate
    };
    let max_output = i64::try_from(per_completion).unwrap_or(i64::MAX);
    let held = {
        let view = request.budget_view();
        let bound = complete(estimate_bound(&view, max_output));
        let mut held = app
            .ledger
            .reserve(snapshot, key, &request.target, bound, recorder.request_id())
            .await;
        // The byte bound does not fit a budget or a quota that counts prompt tokens: judge it
        // on the counted prompt. (A request or concurrency quota would refuse the count too,
        // and the count would load the tokenizer for nothing.)
        let recount = match &held {
            Err(GatewayError::Budget(_)) => true,
            Err(GatewayError::Quota(q)) => crate::spend::Metric::of_limit_name(&q.limit_name)
                .is_some_and(|m| m.counts_prompt()),
            _ => false,
        };
        if recount {
            crate::spend::estimate::load().await;
            let counted = complete(estimate(&view, max_output));
            if counted.input_tokens < bound.input_tokens {
                held = app
                    .ledger
                    .reserve(
                        snapshot,
                        key,
                        &request.target,
                        counted,
                        recorder.request_id(),
                    )
                    .await;
            }
        }
        held
    };
    match held {
        Ok(None) => Flow::Continue(()),
        Ok(Some(reservation)) => {
            if let Some(family) = family {
                request.edit_body(|body| cap::inject_output_cap(family, body, per_completion));
            }
            recorder.add_decisions(vec![reservation.decision()]);
            recorder.attach_reservation(app.ledger.clone(), reservation);
            Flow::Continue(())
        }
        Err(error) => Flow::Respond(error),
    }
}
