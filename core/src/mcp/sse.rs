//! The legacy HTTP+SSE transport (2024-11-05): `GET` opens the upstream stream, whose first
//! `endpoint` event names the URL for POSTs. The gateway rewrites that event to point back
//! through itself (`/v1/mcp/{slug}/<upstream path>?<upstream query>`), never at the upstream,
//! and maps POSTs on that path to the same path on the upstream's origin.
//!
//! On this transport the answer to a POSTed `tools/call` arrives later, as a `message` event on
//! the GET stream. So the POST registers its `tools/call` ids in the session's [`IdMap`] before
//! it is sent upstream, its usage row waits in a [`PendingPost`], and the stream's
//! [`governed`] relay matches each result event to its call: the `tool_result` guardrail phase
//! runs on it (masking rewrites the event, a refusal replaces it with a JSON-RPC error coded
//! `mcp_guardrail_block`) and the call's row gets the result's bytes, cost and verdict. A row
//! is written exactly once: when its last result is relayed, when its results time out (the
//! client then gets a JSON-RPC `mcp_upstream_error` for each, and a late result is dropped), or
//! when the stream ends first.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;

use super::gateway::Prepared;
use super::http::{event_data, event_name, find_boundary, replace_data};
use super::jsonrpc::{UPSTREAM_FAILED, filter_tools};
use super::server::ToolRules;
use crate::error::{Family, GatewayError, McpError, QuotaExceeded};
use crate::pipeline::Recorder;
use crate::pipeline::inspect::ToolGuards;

/// At most this many `tools/call` results awaited on one legacy session (a POST beyond it is
/// refused `429 rate_limit_exceeded`, limit `pending_tool_calls`).
pub const MAX_PENDING: usize = 256;

/// How many timed-out ids a session remembers so their late results are dropped, not relayed
/// uninspected after the client was told the call failed.
pub const MAX_EXPIRED: usize = 256;

/// The open legacy SSE streams of this replica, by (key id, gateway endpoint), so an answer the
/// gateway makes itself (a refused tool call) reaches the client on its stream, and a POST finds
/// the session whose stream carries its results: a legacy client reads answers only there.
#[derive(Debug, Default)]
pub struct Streams {
    open: Mutex<HashMap<String, Arc<Session>>>,
}

impl Streams {
    fn id(key_id: &str, endpoint: &str) -> String {
        format!("{key_id}\u{0}{endpoint}")
    }

    /// Registers `session` under the endpoint its `endpoint` event named.
    pub fn register(&self, session: &Arc<Session>, endpoint: &str) {
        if let Ok(mut slot) = session.endpoint.lock() {
            *slot = Some(endpoint.to_string());
        }
        if let Ok(mut open) = self.open.lock() {
            open.insert(Self::id(&session.key_id, endpoint), session.clone());
        }
    }

    /// Forgets the stream of `session` (it ended).
    pub fn remove(&self, session: &Session) {
        let endpoint = session.endpoint.lock().ok().and_then(|mut e| e.take());
        if let (Some(endpoint), Ok(mut open)) = (endpoint, self.open.lock()) {
            let id = Self::id(&session.key_id, &endpoint);
            if open
                .get(&id)
                .is_some_and(|s| std::ptr::eq(s.as_ref(), session))
            {
                open.remove(&id);
            }
        }
    }

    /// The session whose stream is open under `endpoint` for `key_id`.
    pub fn session(&self, key_id: &str, endpoint: &str) -> Option<Arc<Session>> {
        self.open
            .lock()
            .ok()
            .and_then(|open| open.get(&Self::id(key_id, endpoint)).cloned())
    }

    /// Sends `message` as an SSE `message` event on the stream of `endpoint`; false if none.
    pub fn send(&self, key_id: &str, endpoint: &str, message: &Value) -> bool {
        self.session(key_id, endpoint)
            .is_some_and(|s| s.send(message))
    }
}

/// What became of an id looked up in an [`IdMap`].
#[derive(Debug, PartialEq, Eq)]
pub enum Taken<T> {
    /// It was awaited: here is its entry (now removed).
    Pending(T),
    /// It timed out: its result must not reach the client.
    Expired,
    /// Not a call the gateway awaits (an answer to `initialize`, `tools/list`...).
    Unknown,
}

/// Why ids could not be awaited.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The map holds [`MAX_PENDING`] ids already.
    Full,
    /// The id is awaited already (JSON-RPC ids are unique per session while in flight).
    Duplicate(String),
}

/// The `tools/call` ids a legacy session awaits (JSON text of the id → entry), bounded, plus a
/// bounded memory of ids that timed out.
#[derive(Debug)]
pub struct IdMap<T> {
    pending: HashMap<String, T>,
    expired: VecDeque<String>,
    expired_set: HashSet<String>,
    capacity: usize,
    expired_capacity: usize,
}

impl<T: Clone> IdMap<T> {
    /// An empty map holding at most `capacity` ids and remembering `expired_capacity` expiries.
    pub fn new(capacity: usize, expired_capacity: usize) -> Self {
        Self {
            pending: HashMap::new(),
            expired: VecDeque::new(),
            expired_set: HashSet::new(),
            capacity,
            expired_capacity,
        }
    }

    /// Ids awaited now.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no id is awaited.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Awaits every id of `ids` with `entry`, or none of them.
    pub fn insert_all(&mut self, ids: &[String], entry: &T) -> Result<(), Refused> {
        let mut seen = HashSet::new();
        if let Some(dup) = ids
            .iter()
            .find(|id| self.pending.contains_key(*id) || !seen.insert(id.as_str()))
        {
            return Err(Refused::Duplicate(dup.clone()));
        }
        if self.pending.len() + ids.len() > self.capacity {
            return Err(Refused::Full);
        }
        for id in ids {
            // A reused id starts afresh: its old expiry no longer applies.
            if self.expired_set.remove(id) {
                self.expired.retain(|e| e != id);
            }
            self.pending.insert(id.clone(), entry.clone());
        }
        Ok(())
    }

    /// Takes the entry of a result's id.
    pub fn take(&mut self, id: &str) -> Taken<T> {
        if let Some(entry) = self.pending.remove(id) {
            return Taken::Pending(entry);
        }
        if self.expired_set.remove(id) {
            self.expired.retain(|e| e != id);
            return Taken::Expired;
        }
        Taken::Unknown
    }

    /// Removes the ids of `ids` still awaited for which `is_entry` holds, without expiring them
    /// (the POST failed before anything could answer). Returns how many were removed.
    pub fn forget(&mut self, ids: &[String], is_entry: impl Fn(&T) -> bool) -> usize {
        ids.iter()
            .filter(|id| {
                self.pending.get(*id).is_some_and(&is_entry) && self.pending.remove(*id).is_some()
            })
            .count()
    }

    /// Expires the ids of `ids` still awaited for which `is_entry` holds: they are remembered
    /// (the oldest forgotten beyond the bound) so a late result is dropped. Returns them.
    pub fn expire(&mut self, ids: &[String], is_entry: impl Fn(&T) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        for id in ids {
            if self.pending.get(id).is_some_and(&is_entry) {
                self.pending.remove(id);
                if self.expired_set.insert(id.clone()) {
                    self.expired.push_back(id.clone());
                }
                out.push(id.clone());
            }
        }
        while self.expired.len() > self.expired_capacity {
            if let Some(old) = self.expired.pop_front() {
                self.expired_set.remove(&old);
            }
        }
        out
    }

    /// Removes and returns every awaited entry (the stream ended), one per id.
    pub fn drain(&mut self) -> Vec<T> {
        self.pending.drain().map(|(_, e)| e).collect()
    }
}

/// One open legacy SSE stream: where gateway-made events go, and the results it awaits.
pub struct Session {
    key_id: String,
    /// The gateway endpoint its `endpoint` event named, once seen.
    endpoint: Mutex<Option<String>>,
    tx: UnboundedSender<Bytes>,
    ids: Mutex<IdMap<Arc<PendingPost>>>,
    /// Bytes of result events counted on the rows of the calls they answer, not on the stream's.
    attributed: AtomicI64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// How the awaited results of a POST came to an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Every result was relayed.
    Relayed,
    /// A result did not come within the server's timeout.
    Timeout,
    /// The stream ended before a result came.
    StreamClosed,
}

/// What the row of a POST has gathered so far.
struct PostState {
    outstanding: usize,
    bytes_out: i64,
    refused: bool,
    decisions: Vec<Value>,
    ending: Ending,
    row: Option<(Recorder, Prepared)>,
}

/// A governed POST of a legacy session whose `tools/call` results are awaited on the stream.
pub struct PendingPost {
    /// Request id (JSON text) → tool name.
    tools: HashMap<String, String>,
    /// The guardrails whose `tool_result` phase runs on the results.
    guards: Option<ToolGuards>,
    state: Mutex<PostState>,
}

impl std::fmt::Debug for PendingPost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingPost")
            .field("tools", &self.tools)
            .finish_non_exhaustive()
    }
}

impl PendingPost {
    /// Counts `resolved` ids as ended with `ending`, adding bytes, decisions and a refusal;
    /// writes the row if it is attached and nothing else is awaited.
    fn resolve(
        &self,
        resolved: usize,
        ending: Ending,
        bytes_out: i64,
        decisions: Vec<Value>,
        refused: bool,
    ) {
        let done = {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            state.outstanding = state.outstanding.saturating_sub(resolved);
            state.bytes_out = state.bytes_out.saturating_add(bytes_out);
            state.decisions.extend(decisions);
            state.refused |= refused;
            if ending != Ending::Relayed && state.ending == Ending::Relayed {
                state.ending = ending;
            }
            if state.outstanding == 0 {
                state.row.take().map(|row| (row, summary(&mut state)))
            } else {
                None
            }
        };
        if let Some(((recorder, prepared), summary)) = done {
            write_row(recorder, &prepared, summary);
        }
    }

    /// Hands over the POST's row once the upstream accepted it: written now if every result
    /// already came (or could not come), else when the last one does.
    pub fn attach(&self, mut recorder: Recorder, prepared: Prepared) {
        let ready = {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            if state.outstanding == 0 {
                Some(summary(&mut state))
            } else {
                // Should the row be dropped unwritten after all, its `Drop` still records it.
                recorder.set_stream_status("awaiting_result");
                state.row = Some((recorder, prepared));
                return;
            }
        };
        if let Some(summary) = ready {
            write_row(recorder, &prepared, summary);
        }
    }
}

impl Drop for PendingPost {
    /// The last holder let go with results still awaited (the stream's relay was dropped while
    /// it inspected one): the row is written as ended with the stream.
    fn drop(&mut self) {
        let Ok(state) = self.state.get_mut() else {
            return;
        };
        if let Some((recorder, prepared)) = state.row.take() {
            if state.outstanding > 0 && state.ending == Ending::Relayed {
                state.ending = Ending::StreamClosed;
            }
            write_row(recorder, &prepared, summary(state));
        }
    }
}

/// The gathered outcome of a POST, taken out of its state to write the row outside the lock.
struct Summary {
    bytes_out: i64,
    refused: bool,
    decisions: Vec<Value>,
    ending: Ending,
}

fn summary(state: &mut PostState) -> Summary {
    Summary {
        bytes_out: state.bytes_out,
        refused: state.refused,
        decisions: std::mem::take(&mut state.decisions),
        ending: state.ending,
    }
}

/// Writes the usage row of a POST whose results ended: the result bytes and the cost they
/// make, the plugin decisions, and the verdict (`403 mcp_guardrail_block` if a result was
/// refused, `502 mcp_upstream_error` if one timed out, else the `202` the client got).
fn write_row(mut recorder: Recorder, p: &Prepared, s: Summary) {
    recorder.add_decisions(s.decisions);
    let mut usage = p.usage.clone();
    usage.bytes_out = s.bytes_out;
    let cost = p.cost(s.bytes_out);
    recorder.set_mcp(usage, cost);
    let (status, code, stream_status) = match (s.refused, s.ending) {
        (true, _) => (403, Some("mcp_guardrail_block"), "result_relayed"),
        (false, Ending::Timeout) => (502, Some("mcp_upstream_error"), "result_timeout"),
        (false, Ending::StreamClosed) => (202, None, "stream_closed"),
        (false, Ending::Relayed) => (202, None, "result_relayed"),
    };
    recorder.set_stream_status(stream_status);
    recorder.finish(status, code);
}

/// A POST's registration with its session: dropped after the upstream call fails (the ids are
/// forgotten, the handler records the row itself), or [`Awaiting::attach`]ed once it succeeded.
pub struct Awaiting {
    session: Arc<Session>,
    post: Arc<PendingPost>,
    ids: Vec<String>,
    attached: bool,
}

impl Awaiting {
    /// The upstream accepted the POST: its row now waits for the results (at most the server's
    /// timeout).
    pub fn attach(mut self, recorder: Recorder, prepared: Prepared) {
        self.attached = true;
        let (timeout, slug) = (prepared.server.timeout, prepared.server.slug.clone());
        self.post.attach(recorder, prepared);
        tokio::spawn(expire_after(
            timeout,
            slug,
            Arc::downgrade(&self.session),
            Arc::downgrade(&self.post),
            std::mem::take(&mut self.ids),
        ));
    }
}

impl Drop for Awaiting {
    /// Not attached: the upstream refused or failed the POST (the handler records its row), so
    /// its ids are no longer awaited.
    fn drop(&mut self) {
        if !self.attached
            && let Ok(mut map) = self.session.ids.lock()
        {
            map.forget(&self.ids, |e| Arc::ptr_eq(e, &self.post));
        }
    }
}

/// Expires the ids of `post` still awaited after `timeout`: the client gets a JSON-RPC error
/// for each, the row is written as timed out.
async fn expire_after(
    timeout: Duration,
    server: String,
    session: Weak<Session>,
    post: Weak<PendingPost>,
    ids: Vec<String>,
) {
    tokio::time::sleep(timeout).await;
    let (Some(session), Some(post)) = (session.upgrade(), post.upgrade()) else {
        return;
    };
    let expired = match session.ids.lock() {
        Ok(mut map) => map.expire(&ids, |e| Arc::ptr_eq(e, &post)),
        Err(_) => return,
    };
    if expired.is_empty() {
        return;
    }
    let error = GatewayError::from(McpError::Upstream {
        server,
        detail: format!("no tool result within {} ms", timeout.as_millis()),
    });
    let mut data = error.body(Family::OpenAi)["error"].clone();
    data["status"] = json!(error.status().as_u16());
    let message = error.to_string();
    for id in &expired {
        let id: Value = serde_json::from_str(id).unwrap_or(Value::Null);
        session.send(&super::jsonrpc::error(
            &id,
            UPSTREAM_FAILED,
            &message,
            data.clone(),
        ));
    }
    post.resolve(expired.len(), Ending::Timeout, 0, Vec::new(), false);
}

impl Session {
    /// A stream opened with `key_id`, gateway-made events going to `tx`.
    pub fn new(key_id: &str, tx: UnboundedSender<Bytes>) -> Arc<Self> {
        Arc::new(Self {
            key_id: key_id.to_string(),
            endpoint: Mutex::new(None),
            tx,
            ids: Mutex::new(IdMap::new(MAX_PENDING, MAX_EXPIRED)),
            attributed: AtomicI64::new(0),
        })
    }

    /// Sends `message` to the client as a `message` event.
    pub fn send(&self, message: &Value) -> bool {
        let event = Bytes::from(format!("event: message\ndata: {message}\n\n"));
        self.tx.send(event).is_ok()
    }

    /// Bytes of the stream counted on the rows of the calls they answer.
    pub fn attributed(&self) -> i64 {
        self.attributed.load(Ordering::Relaxed)
    }

    /// Awaits the `tools/call` results of a governed POST (`tools`: id JSON text → tool name)
    /// before it is sent upstream (its result may come on the stream before the POST's own
    /// answer). `Ok(None)` when it calls no tool with an id.
    pub fn expect(
        self: &Arc<Self>,
        server: &str,
        tools: HashMap<String, String>,
        guards: Option<ToolGuards>,
    ) -> Result<Option<Awaiting>, GatewayError> {
        if tools.is_empty() {
            return Ok(None);
        }
        let ids: Vec<String> = tools.keys().cloned().collect();
        let post = Arc::new(PendingPost {
            state: Mutex::new(PostState {
                outstanding: ids.len(),
                bytes_out: 0,
                refused: false,
                decisions: Vec::new(),
                ending: Ending::Relayed,
                row: None,
            }),
            tools,
            guards,
        });
        let refused = match self.ids.lock() {
            Ok(mut map) => map.insert_all(&ids, &post).err(),
            Err(_) => Some(Refused::Full),
        };
        match refused {
            None => Ok(Some(Awaiting {
                session: self.clone(),
                post,
                ids,
                attached: false,
            })),
            Some(Refused::Full) => Err(GatewayError::Quota(Box::new(QuotaExceeded {
                code: "rate_limit_exceeded",
                scope: "mcp_server",
                subject: server.to_string(),
                limit_name: "pending_tool_calls".into(),
                limit: i64::try_from(MAX_PENDING).unwrap_or(i64::MAX),
                used: i64::try_from(MAX_PENDING).unwrap_or(i64::MAX),
                reserved: 0,
                retry_after_secs: 1,
            }))),
            Some(Refused::Duplicate(id)) => {
                Err(GatewayError::Request(crate::error::RequestError::Invalid(
                    format!("the JSON-RPC id {id} is already in flight on this session"),
                )))
            }
        }
    }

    /// The stream ended: every awaited result is given up, each row written as such.
    pub fn close(&self) {
        let drained = self.ids.lock().map(|mut m| m.drain()).unwrap_or_default();
        for post in drained {
            post.resolve(1, Ending::StreamClosed, 0, Vec::new(), false);
        }
    }

    fn take(&self, id: &str) -> Taken<Arc<PendingPost>> {
        self.ids
            .lock()
            .map(|mut m| m.take(id))
            .unwrap_or(Taken::Unknown)
    }
}

/// The gateway endpoint a legacy client POSTs to, as the `endpoint` event named it.
pub fn post_endpoint(slug: &str, path: Option<&str>, query: Option<&str>) -> String {
    let mut out = format!("/v1/mcp/{slug}/{}", path.unwrap_or_default());
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The upstream origin (`scheme://host:port`) of `url`.
fn origin(url: &reqwest::Url) -> String {
    let mut origin = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        origin.push_str(&format!(":{port}"));
    }
    origin
}

/// Where the gateway sends a POST made on `/v1/mcp/{slug}/{path}` of an SSE server.
pub fn message_url(sse_url: &str, path: Option<&str>, query: Option<&str>) -> Option<String> {
    let base = reqwest::Url::parse(sse_url).ok()?;
    Some(super::http::upstream_url(&origin(&base), path, query))
}

/// The gateway URL (path and query) for an upstream `endpoint` event's data, if it stays on the
/// upstream's origin (an endpoint elsewhere is refused: the gateway would not govern it).
pub fn gateway_endpoint(sse_url: &str, slug: &str, data: &str) -> Option<String> {
    let base = reqwest::Url::parse(sse_url).ok()?;
    let target = base.join(data.trim()).ok()?;
    if origin(&target) != origin(&base) {
        return None;
    }
    let mut out = format!("/v1/mcp/{slug}{}", target.path());
    if let Some(q) = target.query() {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

/// What the relay of one legacy SSE stream needs.
pub struct Governor {
    /// The session of the stream.
    pub session: Arc<Session>,
    /// The registry it joins once its `endpoint` event passed.
    pub runtime: Arc<super::Runtime>,
    /// The server's SSE URL.
    pub sse_url: String,
    /// The server slug.
    pub slug: String,
    /// Tool rules, when they can hide tools from `tools/list`.
    pub rules: Option<ToolRules>,
    /// The largest event the relay buffers (the policy's `max_response_bytes`): a stream with a
    /// longer one ends there rather than passing it on uninspected.
    pub max_event_bytes: usize,
}

/// The JSON-RPC responses (id as JSON text) in a message or a batch.
fn response_ids(value: &Value) -> Vec<String> {
    let one = |m: &Value| {
        let is_response =
            m.get("method").is_none() && (m.get("result").is_some() || m.get("error").is_some());
        m.get("id")
            .filter(|id| is_response && !id.is_null())
            .map(Value::to_string)
    };
    match value {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

/// Removes the responses with one of `ids` from a message or batch; true if nothing is left.
fn drop_responses(value: &mut Value, ids: &HashSet<String>) -> bool {
    let hit = |m: &Value| m.get("id").is_some_and(|id| ids.contains(&id.to_string()));
    match value {
        Value::Array(items) => {
            items.retain(|m| !hit(m));
            items.is_empty()
        }
        other => hit(other),
    }
}

impl Governor {
    /// One event of the stream (its text without the blank line that ends it): `None` keeps
    /// it as it came, `Some("")` drops it, `Some(text)` replaces it.
    async fn event(&self, event: &str) -> Option<String> {
        if event_name(event) == Some("endpoint") {
            let data = event_data(event)?;
            let rewritten = gateway_endpoint(&self.sse_url, &self.slug, &data)
                .unwrap_or_else(|| format!("/v1/mcp/{}/invalid-upstream-endpoint", self.slug));
            self.runtime.sse.register(&self.session, &rewritten);
            return Some(replace_data(event, &rewritten));
        }
        let data = event_data(event)?;
        let mut value: Value = serde_json::from_str(&data).ok()?;
        let mut changed = self
            .rules
            .as_ref()
            .is_some_and(|rules| filter_tools(&mut value, rules));
        // Match each result to the POST that called it.
        let mut posts: Vec<(Arc<PendingPost>, HashMap<String, String>)> = Vec::new();
        let mut expired = HashSet::new();
        for id in response_ids(&value) {
            match self.session.take(&id) {
                Taken::Pending(post) => {
                    let tool = post.tools.get(&id).cloned().unwrap_or_default();
                    match posts.iter_mut().find(|(p, _)| Arc::ptr_eq(p, &post)) {
                        Some((_, ids)) => {
                            ids.insert(id, tool);
                        }
                        None => posts.push((post, HashMap::from([(id, tool)]))),
                    }
                }
                Taken::Expired => {
                    expired.insert(id);
                }
                Taken::Unknown => {}
            }
        }
        if !expired.is_empty() {
            changed = true;
            if drop_responses(&mut value, &expired) {
                return Some(String::new());
            }
        }
        // The `tool_result` phase, then each POST's row gets its results' bytes and verdict.
        let mut outcomes = Vec::with_capacity(posts.len());
        for (post, ids) in &posts {
            let (decisions, refused) = match &post.guards {
                Some(guards) => {
                    let (decisions, masked, refused) = guards.check_results(&mut value, ids).await;
                    changed |= masked;
                    (decisions, refused)
                }
                None => (Vec::new(), false),
            };
            outcomes.push((decisions, refused));
        }
        let out = changed.then(|| replace_data(event, &value.to_string()));
        if !posts.is_empty() {
            // One call's result event is that call's; several in one batch share it evenly.
            let len = out.as_deref().unwrap_or(event).len() + 2;
            let share = i64::try_from(len / posts.len()).unwrap_or(i64::MAX);
            for ((post, ids), (decisions, refused)) in posts.iter().zip(outcomes) {
                self.session.attributed.fetch_add(share, Ordering::Relaxed);
                post.resolve(ids.len(), Ending::Relayed, share, decisions, refused);
            }
        }
        out
    }
}

/// The legacy SSE stream relayed event by event through `governor` (endpoint rewrite, tool
/// filtering, results matched to their calls and inspected). Ends with the upstream's stream.
pub fn governed<S>(
    upstream: S,
    governor: Governor,
) -> impl Stream<Item = Result<Bytes, reqwest::Error>> + Send + Unpin + 'static
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + Unpin + 'static,
{
    let state = (upstream, BytesMut::new(), governor, false);
    futures_util::stream::unfold(
        state,
        |(mut upstream, mut buffer, governor, ended)| async move {
            if ended {
                return None;
            }
            loop {
                // Every complete event in the buffer, each inspected in turn.
                let mut out = BytesMut::new();
                while let Some((end, sep)) = find_boundary(&buffer) {
                    let event = buffer.split_to(end + sep);
                    let text = String::from_utf8_lossy(&event[..end]).into_owned();
                    match governor.event(&text).await {
                        None => out.extend_from_slice(&event),
                        Some(new) if new.is_empty() => {}
                        Some(new) => {
                            out.extend_from_slice(new.as_bytes());
                            out.extend_from_slice(b"\n\n");
                        }
                    }
                }
                if !out.is_empty() {
                    return Some((Ok(out.freeze()), (upstream, buffer, governor, false)));
                }
                if buffer.len() > governor.max_event_bytes {
                    tracing::warn!(server = %governor.slug, limit = governor.max_event_bytes,
                        "an SSE event of the legacy MCP stream exceeds max_response_bytes: the stream ends");
                    return None;
                }
                match upstream.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(e), (upstream, buffer, governor, true))),
                    None => {
                        let rest = buffer.split().freeze();
                        if rest.is_empty() {
                            return None;
                        }
                        return Some((Ok(rest), (upstream, buffer, governor, true)));
                    }
                }
            }
        },
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_id_map_matches_each_result_to_its_call_once() {
        let mut map: IdMap<u32> = IdMap::new(4, 4);
        map.insert_all(&ids(&["1", "\"a\""]), &7).expect("room");
        assert_eq!(map.len(), 2);
        assert_eq!(map.take("\"a\""), Taken::Pending(7));
        assert_eq!(map.take("\"a\""), Taken::Unknown, "matched once only");
        assert_eq!(map.take("2"), Taken::Unknown);
        assert_eq!(map.drain(), vec![7]);
        assert!(map.is_empty());
    }

    #[test]
    fn the_id_map_is_bounded_and_refuses_ids_already_in_flight() {
        let mut map: IdMap<u32> = IdMap::new(3, 4);
        map.insert_all(&ids(&["1", "2"]), &1).expect("room");
        assert_eq!(
            map.insert_all(&ids(&["3", "4"]), &2),
            Err(Refused::Full),
            "all or nothing"
        );
        assert_eq!(map.len(), 2);
        assert_eq!(
            map.insert_all(&ids(&["2"]), &3),
            Err(Refused::Duplicate("2".into()))
        );
        assert_eq!(
            map.insert_all(&ids(&["5", "5"]), &3),
            Err(Refused::Duplicate("5".into()))
        );
        map.insert_all(&ids(&["3"]), &4).expect("room for one");
        assert_eq!(map.take("2"), Taken::Pending(1));
        assert_eq!(map.take("3"), Taken::Pending(4));
    }

    #[test]
    fn expired_ids_drop_their_late_result_and_the_memory_of_them_is_bounded() {
        let mut map: IdMap<u32> = IdMap::new(8, 2);
        map.insert_all(&ids(&["1", "2", "3"]), &1).expect("room");
        map.insert_all(&ids(&["4"]), &2).expect("room");
        // Only the entries of the expiring call go, and only while still awaited.
        assert_eq!(map.expire(&ids(&["1", "4"]), |e| *e == 1), ids(&["1"]));
        assert_eq!(map.take("4"), Taken::Pending(2));
        assert_eq!(map.take("1"), Taken::Expired);
        assert_eq!(map.take("1"), Taken::Unknown, "dropped once");
        assert_eq!(map.expire(&ids(&["2", "3"]), |_| true), ids(&["2", "3"]));
        map.insert_all(&ids(&["9"]), &3).expect("room");
        assert_eq!(map.expire(&ids(&["9"]), |_| true), ids(&["9"]));
        assert_eq!(
            map.take("2"),
            Taken::Unknown,
            "the oldest expiry is forgotten"
        );
        assert_eq!(map.take("3"), Taken::Expired);
        assert_eq!(map.take("9"), Taken::Expired);
        // A forgotten call (its POST failed) leaves nothing behind.
        map.insert_all(&ids(&["5"]), &4).expect("room");
        assert_eq!(map.forget(&ids(&["5"]), |e| *e == 4), 1);
        assert_eq!(map.take("5"), Taken::Unknown);
        // An id reused after its expiry is awaited afresh.
        map.insert_all(&ids(&["6"]), &5).expect("room");
        assert_eq!(map.expire(&ids(&["6"]), |_| true), ids(&["6"]));
        map.insert_all(&ids(&["6"]), &6).expect("room");
        assert_eq!(map.take("6"), Taken::Pending(6));
    }

    fn governor(
        rules: Option<ToolRules>,
    ) -> (
        Governor,
        tokio::sync::mpsc::UnboundedReceiver<Bytes>,
        Arc<super::super::Runtime>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let runtime = Arc::new(super::super::Runtime::new(b"secret"));
        let governor = Governor {
            session: Session::new("key_1", tx),
            runtime: runtime.clone(),
            sse_url: "http://127.0.0.1:3001/sse".into(),
            slug: "legacy".into(),
            rules,
            max_event_bytes: 1 << 20,
        };
        (governor, rx, runtime)
    }

    #[tokio::test]
    async fn the_endpoint_event_points_back_through_the_gateway_and_opens_the_session() {
        let (governor, _rx, runtime) = governor(None);
        let out = governor
            .event("event: endpoint\ndata: /message?sessionId=abc-123")
            .await
            .expect("rewritten");
        assert_eq!(
            out,
            "event: endpoint\ndata: /v1/mcp/legacy/message?sessionId=abc-123"
        );
        let session = runtime
            .sse
            .session("key_1", "/v1/mcp/legacy/message?sessionId=abc-123")
            .expect("registered");
        assert!(Arc::ptr_eq(&session, &governor.session));
        assert!(
            runtime
                .sse
                .session("key_2", "/v1/mcp/legacy/message?sessionId=abc-123")
                .is_none()
        );
        runtime.sse.remove(&session);
        assert!(
            runtime
                .sse
                .session("key_1", "/v1/mcp/legacy/message?sessionId=abc-123")
                .is_none()
        );
        assert_eq!(
            gateway_endpoint("http://127.0.0.1:3001/sse", "x", "http://evil.example/m"),
            None
        );
        assert_eq!(
            post_endpoint("legacy", Some("message"), Some("sessionId=abc-123")),
            "/v1/mcp/legacy/message?sessionId=abc-123"
        );
        assert_eq!(
            message_url(
                "http://127.0.0.1:3001/sse",
                Some("message"),
                Some("sessionId=abc")
            )
            .as_deref(),
            Some("http://127.0.0.1:3001/message?sessionId=abc")
        );
    }

    #[tokio::test]
    async fn a_result_event_is_matched_to_its_call_and_its_bytes_counted_there() {
        let rules = ToolRules {
            allowed: vec![],
            blocked: vec!["get-env".into()],
            blocked_keywords: vec![],
        };
        let (governor, _rx, _) = governor(Some(rules));
        let session = governor.session.clone();
        let awaiting = session
            .expect(
                "legacy",
                HashMap::from([("7".to_string(), "echo".to_string())]),
                None,
            )
            .expect("room")
            .expect("a call");
        // A tools/list answer is no call's: filtered, not attributed.
        let list = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":6,\"result\":{\"tools\":[{\"name\":\"echo\"},{\"name\":\"get-env\"}]}}";
        let out = governor.event(list).await.expect("filtered");
        assert!(!out.contains("get-env"), "{out}");
        assert_eq!(session.attributed(), 0);
        let result =
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[]}}";
        assert_eq!(governor.event(result).await, None, "relayed as it came");
        assert_eq!(
            session.attributed(),
            i64::try_from(result.len() + 2).expect("len")
        );
        {
            let state = awaiting.post.state.lock().expect("state");
            assert_eq!(state.outstanding, 0);
            assert_eq!(
                state.bytes_out,
                i64::try_from(result.len() + 2).expect("len")
            );
        }
        // The same id again is no longer awaited.
        assert_eq!(governor.event(result).await, None);
        assert_eq!(
            session.attributed(),
            i64::try_from(result.len() + 2).expect("len")
        );
    }

    #[tokio::test]
    async fn a_late_result_of_an_expired_call_is_dropped_and_the_client_told() {
        let (governor, mut rx, _) = governor(None);
        let session = governor.session.clone();
        let awaiting = session
            .expect(
                "legacy",
                HashMap::from([("3".to_string(), "echo".to_string())]),
                None,
            )
            .expect("room")
            .expect("a call");
        expire_after(
            Duration::ZERO,
            "legacy".into(),
            Arc::downgrade(&session),
            Arc::downgrade(&awaiting.post),
            vec!["3".into()],
        )
        .await;
        let told = rx.try_recv().expect("an error event");
        let told = String::from_utf8_lossy(&told).into_owned();
        assert!(told.contains("\"id\":3"), "{told}");
        assert!(told.contains("mcp_upstream_error"), "{told}");
        assert_eq!(
            awaiting.post.state.lock().expect("state").ending,
            Ending::Timeout
        );
        let late = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"secret\"}]}}";
        assert_eq!(governor.event(late).await.as_deref(), Some(""), "dropped");
    }

    #[tokio::test]
    async fn a_stream_that_ends_first_gives_up_every_awaited_result() {
        let (governor, _rx, _) = governor(None);
        let session = governor.session.clone();
        let tools = HashMap::from([
            ("1".to_string(), "echo".to_string()),
            ("2".to_string(), "add".to_string()),
        ]);
        let awaiting = session
            .expect("legacy", tools, None)
            .expect("room")
            .expect("calls");
        session.close();
        let state = awaiting.post.state.lock().expect("state");
        assert_eq!(state.outstanding, 0);
        assert_eq!(state.ending, Ending::StreamClosed);
    }
}
