//! Stdio MCP servers: the gateway runs the policy directory's command as a child process, one
//! per MCP session (or one per server for session-less use), and speaks newline-delimited
//! JSON-RPC on its stdin/stdout.
//!
//! Security stance: only commands written in the policy directory ever run (a client can
//! choose a server, never a command or its arguments); the child gets a minimal environment
//! (`PATH`, `HOME`, `LANG` and the server's `env`), not the gateway's (which holds provider
//! credentials). Its stderr goes to the gateway log. A child idle for the server's
//! `idle_timeout_secs` is stopped; one that crashed is restarted on the next request, replaying
//! the session's `initialize`; every child is killed when the gateway stops. Stdio sessions live
//! in the replica that started them.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{broadcast, oneshot};

use super::server::{McpServer, StdioCommand};
use crate::error::McpError;

/// Messages a child sends on its own (notifications, requests to the client), for GET streams.
const EVENTS: usize = 256;

/// One running child.
struct Process {
    stdin: tokio::sync::Mutex<ChildStdin>,
    child: Mutex<Option<tokio::process::Child>>,
    alive: Arc<AtomicBool>,
}

/// A stdio session: its child (restarted after a crash) and what is waiting for answers.
pub struct Session {
    /// The server slug.
    pub slug: String,
    /// The key that opened the session (`None` for the per-server session-less child).
    pub key_id: Option<String>,
    command: StdioCommand,
    process: tokio::sync::Mutex<Option<Arc<Process>>>,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>,
    events: broadcast::Sender<String>,
    last_used: Mutex<Instant>,
    /// The session's `initialize` request and `initialized` notification, replayed on restart.
    handshake: Mutex<Vec<Map<String, Value>>>,
    next_id: AtomicU64,
    /// How many times the child was started.
    pub starts: AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("slug", &self.slug)
            .finish_non_exhaustive()
    }
}

/// Every stdio session of this replica.
#[derive(Debug, Default)]
pub struct Children {
    sessions: Arc<Mutex<HashMap<String, Arc<Session>>>>,
}

fn stdio_error(slug: &str, detail: impl Into<String>) -> McpError {
    McpError::Stdio {
        server: slug.to_string(),
        detail: detail.into(),
    }
}

impl Children {
    /// The session `id`, if it exists for `slug` and `key_id`.
    pub fn get(&self, id: &str, slug: &str, key_id: &str) -> Option<Arc<Session>> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(id)
            .filter(|s| s.slug == slug && s.key_id.as_deref() == Some(key_id))
            .cloned()
    }

    /// Opens a new session for `key_id` (its child starts on the first message); returns its id.
    pub fn open(
        &self,
        server: &McpServer,
        command: &StdioCommand,
        key_id: &str,
    ) -> (String, Arc<Session>) {
        let id = format!("tgs_{}", uuid::Uuid::new_v4().simple());
        let session = Arc::new(Session::new(
            &server.slug,
            Some(key_id.to_string()),
            command,
        ));
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), session.clone());
        self.spawn_reaper(id.clone(), session.clone());
        (id, session)
    }

    /// The per-server child for session-less requests (protocol `2026-07-28` clients).
    pub fn shared(&self, server: &McpServer, command: &StdioCommand) -> Arc<Session> {
        let id = format!("server:{}", server.slug);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sessions.get(&id).filter(|s| s.command == *command) {
            return s.clone();
        }
        let session = Arc::new(Session::new(&server.slug, None, command));
        sessions.insert(id.clone(), session.clone());
        drop(sessions);
        self.spawn_reaper(id, session.clone());
        session
    }

    /// Ends a session and its child.
    pub fn close(&self, id: &str) -> bool {
        let removed = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        match removed {
            Some(session) => {
                session.kill();
                true
            }
            None => false,
        }
    }

    /// Kills every child (gateway shutdown).
    pub fn shutdown(&self) {
        let sessions: Vec<_> = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in sessions {
            s.kill();
        }
    }

    fn spawn_reaper(&self, id: String, session: Arc<Session>) {
        let weak = Arc::downgrade(&session);
        let idle = session.command.idle_timeout;
        drop(session);
        let sessions = Arc::downgrade(&self.sessions);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(idle / 4 + Duration::from_millis(50)).await;
                let Some(session) = weak.upgrade() else {
                    return;
                };
                let since = session
                    .last_used
                    .lock()
                    .map(|t| t.elapsed())
                    .unwrap_or_default();
                if since >= idle {
                    tracing::info!(server = %session.slug, session = %id, "stdio session idle: stopping its child");
                    if let Some(sessions) = sessions.upgrade() {
                        sessions
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&id);
                    }
                    session.kill();
                    return;
                }
            }
        });
    }
}

impl Session {
    fn new(slug: &str, key_id: Option<String>, command: &StdioCommand) -> Self {
        Self {
            slug: slug.to_string(),
            key_id,
            command: command.clone(),
            process: tokio::sync::Mutex::new(None),
            pending: Arc::new(Mutex::new(HashMap::new())),
            events: broadcast::channel(EVENTS).0,
            last_used: Mutex::new(Instant::now()),
            handshake: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            starts: AtomicU64::new(0),
        }
    }

    /// Messages the child sends on its own, for a GET stream.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.events.subscribe()
    }

    fn kill(&self) {
        if let Ok(mut process) = self.process.try_lock()
            && let Some(p) = process.take()
        {
            p.alive.store(false, Ordering::Release);
            if let Ok(mut child) = p.child.lock()
                && let Some(mut c) = child.take()
            {
                let _ = c.start_kill();
            }
        }
    }

    /// Starts the child with a minimal environment and its stdout/stderr readers.
    fn start(&self) -> Result<Arc<Process>, McpError> {
        let c = &self.command;
        let mut command = Command::new(&c.command);
        command
            .args(&c.args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in ["PATH", "HOME", "LANG"] {
            if let Ok(value) = std::env::var(var) {
                command.env(var, value);
            }
        }
        command.envs(&c.env);
        if let Some(cwd) = &c.cwd {
            command.current_dir(cwd);
        }
        let mut child = command
            .spawn()
            .map_err(|e| stdio_error(&self.slug, format!("cannot start '{}': {e}", c.command)))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(stdio_error(&self.slug, "the child has no stdio pipes"));
        };
        self.starts.fetch_add(1, Ordering::Relaxed);
        let alive = Arc::new(AtomicBool::new(true));
        let slug = self.slug.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(server = %slug, "stdio server stderr: {line}");
            }
        });
        let pending = self.pending.clone();
        let events = self.events.clone();
        let flag = alive.clone();
        let slug = self.slug.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let Ok(value) = serde_json::from_str::<Value>(line) else {
                    tracing::warn!(server = %slug, "stdio server wrote a line that is not JSON");
                    continue;
                };
                let is_response = value.get("method").is_none()
                    && (value.get("result").is_some() || value.get("error").is_some());
                if is_response && let Some(id) = value.get("id") {
                    let waiter = pending
                        .lock()
                        .ok()
                        .and_then(|mut p| p.remove(&id.to_string()));
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(value);
                        continue;
                    }
                }
                let _ = events.send(value.to_string());
            }
            flag.store(false, Ordering::Release);
            // Whoever still waits learns the child is gone (their senders drop).
            if let Ok(mut p) = pending.lock() {
                p.clear();
            }
            tracing::warn!(server = %slug, "stdio server exited");
        });
        Ok(Arc::new(Process {
            stdin: tokio::sync::Mutex::new(stdin),
            child: Mutex::new(Some(child)),
            alive,
        }))
    }

    /// The running child, started (or restarted after a crash, replaying the handshake).
    async fn process(&self, timeout: Duration) -> Result<Arc<Process>, McpError> {
        let mut guard = self.process.lock().await;
        if let Some(p) = guard.as_ref().filter(|p| p.alive.load(Ordering::Acquire)) {
            return Ok(p.clone());
        }
        let restarted = guard.is_some() || self.starts.load(Ordering::Relaxed) > 0;
        let process = self.start()?;
        *guard = Some(process.clone());
        drop(guard);
        let handshake = self.handshake.lock().map(|h| h.clone()).unwrap_or_default();
        if restarted && !handshake.is_empty() {
            tracing::warn!(server = %self.slug, "stdio server restarted: replaying the session's initialize");
            for message in handshake {
                let answer = self.exchange_one(&process, message, timeout).await?;
                drop(answer);
            }
        }
        Ok(process)
    }

    /// Writes one message; for a request, waits for its answer (with the caller's id restored).
    async fn exchange_one(
        &self,
        process: &Process,
        mut message: Map<String, Value>,
        timeout: Duration,
    ) -> Result<Option<Value>, McpError> {
        let is_request =
            message.get("method").is_some() && message.get("id").is_some_and(|id| !id.is_null());
        let mut waiter = None;
        let mut original_id = None;
        if is_request {
            // Ids are rewritten so session-less callers sharing one child never collide.
            let gateway_id = Value::String(format!(
                "tg-{}",
                self.next_id.fetch_add(1, Ordering::Relaxed)
            ));
            original_id = message.insert("id".into(), gateway_id.clone());
            let (tx, rx) = oneshot::channel();
            if let Ok(mut p) = self.pending.lock() {
                p.insert(gateway_id.to_string(), tx);
            }
            waiter = Some((rx, gateway_id));
        }
        let mut line = serde_json::to_vec(&Value::Object(message))
            .map_err(|e| stdio_error(&self.slug, e.to_string()))?;
        line.push(b'\n');
        {
            let mut stdin = process.stdin.lock().await;
            stdin
                .write_all(&line)
                .await
                .map_err(|e| stdio_error(&self.slug, format!("cannot write to the child: {e}")))?;
            stdin
                .flush()
                .await
                .map_err(|e| stdio_error(&self.slug, format!("cannot write to the child: {e}")))?;
        }
        let Some((rx, gateway_id)) = waiter else {
            return Ok(None);
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(mut answer)) => {
                if let Some(obj) = answer.as_object_mut() {
                    obj.insert("id".into(), original_id.unwrap_or(Value::Null));
                }
                Ok(Some(answer))
            }
            Ok(Err(_)) => Err(stdio_error(&self.slug, "the child exited before answering")),
            Err(_) => {
                if let Ok(mut p) = self.pending.lock() {
                    p.remove(&gateway_id.to_string());
                }
                Err(stdio_error(
                    &self.slug,
                    format!("no answer within {} ms", timeout.as_millis()),
                ))
            }
        }
    }

    /// Sends every message of a POST body and collects the answers to its requests, in order.
    pub async fn exchange(
        &self,
        messages: Vec<Map<String, Value>>,
        timeout: Duration,
    ) -> Result<Vec<Value>, McpError> {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
        for m in &messages {
            let method = m.get("method").and_then(Value::as_str);
            if matches!(
                method,
                Some("initialize") | Some("notifications/initialized")
            ) && let Ok(mut h) = self.handshake.lock()
            {
                if method == Some("initialize") {
                    h.clear();
                }
                h.push(m.clone());
            }
        }
        let process = self.process(timeout).await?;
        let mut answers = Vec::new();
        for message in messages {
            if let Some(answer) = self.exchange_one(&process, message, timeout).await? {
                answers.push(answer);
            }
        }
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
        Ok(answers)
    }
}
