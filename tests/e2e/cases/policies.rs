//! The policy directory while the gateway serves: hot reload, CEL access rules, Rhai routing,
//! `/admin/policies`, `tollgate test`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mock_upstream::MockConfig;
use serde_json::{Value, json};

use crate::common::{
    ADMIN_TOKEN, Gateway, bin, chat_body, expect_error, http, mock, request_id, sample,
    standard_policy,
};

async fn chat(gw: &Gateway, secret: &str, body: &Value) -> reqwest::Response {
    http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Polls until a chat request for `model` gets `status`; returns how long it took.
async fn until_status(
    gw: &Gateway,
    secret: &str,
    model: &str,
    status: u16,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if chat(gw, secret, &chat_body(model)).await.status().as_u16() == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "status {status} not seen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

#[tokio::test]
async fn a_rule_added_while_serving_starts_denying_within_a_second() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    assert_eq!(chat(&gw, &secret, &chat_body("chat")).await.status(), 200);
    let saved = Instant::now();
    write(
        &gw.policies().join("access/no-chat.cel"),
        "// No chat today.\nrequest.model != \"chat\"\n",
    );
    let took = until_status(&gw, &secret, "chat", 403, Duration::from_secs(5)).await;
    println!(
        "reload latency: save to deciding in {:?} (poll started {:?} after save)",
        took,
        saved.elapsed() - took
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let response = chat(&gw, &secret, &chat_body("chat")).await;
    let id = expect_error(response, 403, "policy_denied").await;
    let row = gw.row_for(&id).await;
    let decisions: Value = serde_json::from_str(row["decisions"].as_str().unwrap()).unwrap();
    assert!(
        decisions
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["rule"] == "no-chat" && d["outcome"] == "deny")
    );
    assert_eq!(
        chat(&gw, &secret, &chat_body("other")).await.status(),
        200,
        "other models still pass"
    );
    let status = gw.admin_policies().await;
    assert_eq!(status["access_rules"][0]["name"], "no-chat");
    assert_eq!(status["access_rules"][0]["description"], "No chat today.");
    assert!(status["generation"].as_u64().unwrap() >= 2);
}

#[tokio::test]
async fn a_broken_rule_keeps_the_previous_set_serving_and_shows_the_error() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_with(
        &standard_policy(&mock),
        &[("access/allow.cel", "request.model != \"other\"\n")],
        &[],
    );
    let (_, secret) = gw.create_key("*");
    let before = gw.admin_policies().await;
    write(
        &gw.policies().join("access/broken.cel"),
        "// header\nrequest.model == )\n",
    );
    // Also break a previously good rule: the whole set must be rejected.
    write(&gw.policies().join("access/allow.cel"), "true\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let status = gw.admin_policies().await;
        if !status["last_error"].is_null() {
            break status;
        }
        assert!(Instant::now() < deadline, "reload error never reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let errors = status["last_error"]["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("access/broken.cel:2:")),
        "{errors:?}"
    );
    assert_eq!(
        status["generation"], before["generation"],
        "the previous set keeps serving"
    );
    assert_eq!(status["content_hash"], before["content_hash"]);
    // The previous rule still decides (the edit to allow.cel was rejected with the set).
    expect_error(
        chat(&gw, &secret, &chat_body("other")).await,
        403,
        "policy_denied",
    )
    .await;
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("tollgate_policy_last_reload_failed 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tollgate_policy_reloads_total{result=\"error\"}"));
    // Fixing the file clears the error and applies both edits.
    write(
        &gw.policies().join("access/broken.cel"),
        "// header\nrequest.model == request.model\n",
    );
    until_status(&gw, &secret, "other", 200, Duration::from_secs(5)).await;
    let status = gw.admin_policies().await;
    assert!(status["last_error"].is_null(), "{status}");
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_token() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    for token in [None, Some("wrong"), Some(secret.as_str())] {
        let mut request = http().get(gw.url("/admin/policies"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        expect_error(request.send().await.unwrap(), 401, "unauthorized").await;
    }
    let ok = http()
        .get(gw.url("/admin/policies"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn shadow_rules_record_but_do_not_deny() {
    let mock = mock(MockConfig::default()).await;
    let files = [(
        "access/trial.cel",
        "// Trying out a stricter rule.\n// @mode shadow\nrequest.stream\n",
    )];
    let gw = Gateway::start_with(&standard_policy(&mock), &files, &[]);
    let (_, secret) = gw.create_key("*");
    let response = chat(&gw, &secret, &chat_body("chat")).await;
    assert_eq!(response.status(), 200);
    let row = gw.row_for(&request_id(&response)).await;
    let decisions: Value = serde_json::from_str(row["decisions"].as_str().unwrap()).unwrap();
    let trial = decisions
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["rule"] == "trial")
        .unwrap();
    assert_eq!(trial["outcome"], "would_deny");
    assert_eq!(trial["mode"], "shadow");
}

#[tokio::test]
async fn cel_evaluation_errors_fail_closed_naming_the_rule() {
    let mock = mock(MockConfig::default()).await;
    let files = [(
        "access/team-header.cel",
        "request.headers[\"x-team\"] == \"blue\"\n",
    )];
    let gw = Gateway::start_with(&standard_policy(&mock), &files, &[]);
    let (_, secret) = gw.create_key("*");
    let response = chat(&gw, &secret, &chat_body("chat")).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "policy_denied");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("team-header") && message.contains("evaluation failed"),
        "{message}"
    );
    let ok = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .header("x-team", "blue")
        .json(&chat_body("chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        mock.count(),
        1,
        "the failed evaluation never reached the provider"
    );
}

#[tokio::test]
async fn access_rules_see_key_request_and_model() {
    let mock = mock(MockConfig::default()).await;
    let rule = r#"
// Interns keep temperature low, and only 127.0.0.0/8 may call models tagged "internal".
(key.team != "interns" || request.temperature == null || request.temperature <= 0.5)
  && (!("internal" in model.tags) || cidr_contains("127.0.0.0/8", request.client_ip))
  && (request.metadata.size() == 0 || request.metadata["tier"] == key.metadata["tier"])
"#;
    let policy = standard_policy(&mock).replace(
        "[models.other]\nprovider = \"mock\"",
        "[models.other]\nprovider = \"mock\"\ntags = [\"internal\"]",
    );
    let gw = Gateway::start_with(&policy, &[("access/combined.cel", rule)], &[]);
    let (_, intern) = gw.create_key_with(&["--team", "interns", "--metadata", "tier=gold"]);
    let mut hot = chat_body("chat");
    hot["temperature"] = json!(0.9);
    expect_error(chat(&gw, &intern, &hot).await, 403, "policy_denied").await;
    hot["temperature"] = json!(0.2);
    assert_eq!(chat(&gw, &intern, &hot).await.status(), 200);
    assert_eq!(
        chat(&gw, &intern, &chat_body("other")).await.status(),
        200,
        "loopback is internal"
    );
    let mut tiered = chat_body("chat");
    tiered["metadata"] = json!({"tier": "gold"});
    assert_eq!(chat(&gw, &intern, &tiered).await.status(), 200);
    tiered["metadata"] = json!({"tier": "silver"});
    expect_error(chat(&gw, &intern, &tiered).await, 403, "policy_denied").await;
}

const GROUPS: &str = r#"
[groups.resilient]
routing = "by-priority"
deployments = [
  { model = "fail-500", priority = 0 },
  { model = "chat", priority = 1 },
]

[groups.runaway]
routing = "spin"
deployments = [{ model = "chat" }]

[groups.runaway-fallback]
routing = "spin-fallback"
deployments = [{ model = "other" }, { model = "chat" }]
"#;

const BY_PRIORITY: &str = "fn route(request, candidates) {\n  candidates.sort(|a, b| a.priority - b.priority);\n  candidates\n}\n";

#[tokio::test]
async fn failover_moves_to_the_next_deployment_and_records_every_attempt() {
    let mock = mock(MockConfig::default()).await;
    let policy = format!("{}{GROUPS}", standard_policy(&mock));
    let files = [
        ("routing/by-priority.rhai", BY_PRIORITY),
        (
            "routing/spin.rhai",
            "fn route(request, candidates) { loop {} }\n",
        ),
        (
            "routing/spin-fallback.rhai",
            "// @on_error fallback\nfn route(request, candidates) { loop {} }\n",
        ),
    ];
    let gw = Gateway::start_with(&policy, &files, &[]);
    let (_, secret) = gw.create_key("*");
    let response = chat(&gw, &secret, &chat_body("resilient")).await;
    assert_eq!(response.status(), 200);
    let row = gw.row_for(&request_id(&response)).await;
    assert_eq!(row["requested_model"], "resilient");
    assert_eq!(row["served_model"], "chat");
    assert_eq!(row["upstream_model"], "upstream-chat-v1");
    let route: Value = serde_json::from_str(row["route"].as_str().unwrap()).unwrap();
    assert_eq!(route["script"], "by-priority");
    assert_eq!(route["order"], json!(["fail-500", "chat"]));
    let attempts = route["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["model"], "fail-500");
    assert_eq!(attempts[0]["outcome"], "failover");
    assert_eq!(attempts[1]["model"], "chat");
    let upstream_models: Vec<_> = mock
        .received()
        .iter()
        .map(|r| r.body["model"].clone())
        .collect();
    assert_eq!(
        upstream_models,
        [json!("mock-500"), json!("upstream-chat-v1")]
    );
}

/// A script that reads only its candidates is run once and its answer reused, but the answer
/// follows the health fields the script read: when the failing deployment starts cooling down,
/// the order changes at once.
#[tokio::test]
async fn a_remembered_route_changes_when_a_deployment_it_reads_cools_down() {
    let mock = mock(MockConfig::default()).await;
    let policy = format!(
        "{}{}",
        standard_policy(&mock),
        r#"
[groups.cooling]
routing = "cooldown-last"
deployments = [
  { model = "fail-500", priority = 0 },
  { model = "chat", priority = 1 },
]
"#
    );
    let script = "fn route(request, candidates) {
    candidates.sort(|a, b| {
        if a.health.in_cooldown != b.health.in_cooldown {
            return if a.health.in_cooldown { 1 } else { -1 };
        }
        a.priority - b.priority
    });
    candidates
}
";
    let gw = Gateway::start_with(&policy, &[("routing/cooldown-last.rhai", script)], &[]);
    let (_, secret) = gw.create_key("*");
    let mut orders = Vec::new();
    for _ in 0..10 {
        let response = chat(&gw, &secret, &chat_body("cooling")).await;
        assert_eq!(response.status(), 200);
        let row = gw.row_for(&request_id(&response)).await;
        let route: Value = serde_json::from_str(row["route"].as_str().unwrap()).unwrap();
        assert_eq!(row["served_model"], "chat");
        orders.push(route["order"].clone());
        if route["order"] == json!(["chat", "fail-500"]) {
            break;
        }
    }
    // Healthy: the priority order, for more than one request (the second is remembered).
    assert_eq!(orders[0], json!(["fail-500", "chat"]), "{orders:?}");
    assert_eq!(orders[1], json!(["fail-500", "chat"]), "{orders:?}");
    // After `cooldown_after` (3) failures the cooling deployment goes last.
    assert_eq!(
        orders.last(),
        Some(&json!(["chat", "fail-500"])),
        "{orders:?}"
    );
    assert!(orders.len() <= 4, "{orders:?}");
}

#[tokio::test]
async fn a_runaway_routing_script_is_stopped_with_its_failure_mode() {
    let mock = mock(MockConfig::default()).await;
    let policy = format!("{}{GROUPS}", standard_policy(&mock));
    let files = [
        ("routing/by-priority.rhai", BY_PRIORITY),
        (
            "routing/spin.rhai",
            "fn route(request, candidates) { loop {} }\n",
        ),
        (
            "routing/spin-fallback.rhai",
            "// @on_error fallback\nfn route(request, candidates) { loop {} }\n",
        ),
    ];
    let gw = Gateway::start_with(&policy, &files, &[]);
    let (_, secret) = gw.create_key("*");
    let started = Instant::now();
    let id = expect_error(
        chat(&gw, &secret, &chat_body("runaway")).await,
        500,
        "routing_error",
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(gw.row_for(&id).await["denied_stage"], "route");
    let response = chat(&gw, &secret, &chat_body("runaway-fallback")).await;
    assert_eq!(response.status(), 200, "fallback uses the configured order");
    let row = gw.row_for(&request_id(&response)).await;
    let route: Value = serde_json::from_str(row["route"].as_str().unwrap()).unwrap();
    assert_eq!(route["fallback"], true);
    assert!(
        route["script_error"]
            .as_str()
            .unwrap()
            .contains("spin-fallback")
    );
    assert_eq!(row["served_model"], "other");
}

#[tokio::test]
async fn no_watch_reloads_only_on_sighup_and_editor_style_saves_are_seen() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_with(&standard_policy(&mock), &[], &["--no-watch"]);
    let (_, secret) = gw.create_key("*");
    write(&gw.policies().join("access/deny.cel"), "false\n");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        chat(&gw, &secret, &chat_body("chat")).await.status(),
        200,
        "no watcher"
    );
    gw.signal("HUP");
    until_status(&gw, &secret, "chat", 403, Duration::from_secs(5)).await;

    // With the watcher: an editor that writes a temp file and renames it over the rule, and a
    // directory swapped as a whole (like `git checkout`), are both seen.
    let watched = Gateway::start_with(
        &standard_policy(&mock),
        &[("access/gate.cel", "true\n")],
        &[],
    );
    let (_, secret) = watched.create_key("*");
    let access = watched.policies().join("access");
    std::fs::write(access.join(".gate.cel.swp"), "false\n").unwrap();
    std::fs::rename(access.join(".gate.cel.swp"), access.join("gate.cel")).unwrap();
    until_status(&watched, &secret, "chat", 403, Duration::from_secs(5)).await;
    let staged = watched.policies().join("access.new");
    write(&staged.join("gate.cel"), "true\n");
    std::fs::rename(&access, watched.policies().join("access.old")).unwrap();
    std::fs::rename(&staged, &access).unwrap();
    std::fs::remove_dir_all(watched.policies().join("access.old")).unwrap();
    until_status(&watched, &secret, "chat", 200, Duration::from_secs(5)).await;
    // Deleted, then re-created.
    std::fs::remove_file(access.join("gate.cel")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    write(&access.join("gate.cel"), "false\n");
    until_status(&watched, &secret, "chat", 403, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn reloads_under_load_drop_no_request() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_with(
        &standard_policy(&mock),
        &[("access/gate.cel", "true\n")],
        &[],
    );
    let (_, secret) = gw.create_key("*");
    let client = http();
    let stop_at = Instant::now() + Duration::from_secs(3);
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, url, secret) = (
            client.clone(),
            gw.url("/v1/chat/completions"),
            secret.clone(),
        );
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while Instant::now() < stop_at && ok + failed < 5_000 {
                match client
                    .post(&url)
                    .bearer_auth(&secret)
                    .json(&chat_body("chat"))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let gate = gw.policies().join("access/gate.cel");
    let mut reloads = 0;
    while Instant::now() < stop_at {
        reloads += 1;
        write(&gate, &format!("// revision {reloads}\ntrue\n"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f) = w.await.unwrap();
        ok += o;
        failed += f;
    }
    let generation = gw.admin_policies().await["generation"].as_u64().unwrap();
    println!(
        "reload under load: {ok} requests ok, {failed} failed, {reloads} rewrites, generation {generation}"
    );
    assert_eq!(failed, 0);
    assert!(generation >= 5, "reloads happened: generation {generation}");
}

fn tollgate(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(bin()).args(args).arg(dir).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn tollgate_test_passes_and_fails_as_it_should() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("gateway.toml"),
        "[providers.p]\nfamily = \"demo\"\n[models.m]\nprovider = \"p\"\ntags = [\"premium\"]\n",
    );
    write(
        &dir.path().join("access/premium.cel"),
        "!(\"premium\" in model.tags) || key.team == \"gold\"\n",
    );
    write(
        &dir.path().join("tests/cases.toml"),
        r#"
[[case]]
name = "gold team may"
key = { team = "gold" }
request = { model = "m" }
expect = { decision = "allow", route = ["m"] }

[[case]]
name = "others may not"
request = { model = "m" }
expect = { decision = "deny", rule = "premium", code = "policy_denied", status = 403 }
"#,
    );
    let (ok, out) = tollgate(&["test"], dir.path());
    assert!(ok, "{out}");
    assert!(
        out.contains("PASS cases::gold team may")
            && out.contains("policy tests: 2 passed, 0 failed"),
        "{out}"
    );

    write(
        &dir.path().join("tests/wrong.toml"),
        "[[case]]\nname = \"wrongly expects allow\"\nrequest = { model = \"m\" }\nexpect = { decision = \"allow\" }\n",
    );
    let (ok, out) = tollgate(&["test"], dir.path());
    assert!(!ok);
    assert!(out.contains("FAIL wrong::wrongly expects allow: expected allow, got deny (policy_denied by 'premium', 403)"), "{out}");
    assert!(out.contains("2 passed, 1 failed"), "{out}");

    write(
        &dir.path().join("tests/wrong.toml"),
        "[[case]]\nname = \"typo\"\nrequst = {}\n",
    );
    let (ok, out) = tollgate(&["test"], dir.path());
    assert!(!ok);
    assert!(
        out.contains("wrong.toml:1:1") || out.contains("wrong.toml:3:1"),
        "{out}"
    );
}

#[test]
fn the_shipped_policies_pass_their_own_tests() {
    let (ok, out) = tollgate(&["test"], &crate::common::repo_root().join("policies"));
    assert!(ok, "{out}");
    assert!(out.contains(" 0 failed"), "{out}");
}

#[test]
fn check_reports_cel_and_rhai_errors_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("gateway.toml"),
        "[providers.p]\nfamily = \"demo\"\n[models.m]\nprovider = \"p\"\n",
    );
    write(
        &dir.path().join("access/a.cel"),
        "// doc\nrequest.model == ) && true\n",
    );
    write(&dir.path().join("access/b.cel"), "reqest.model == 'm'\n");
    write(
        &dir.path().join("routing/r.rhai"),
        "fn route(request, candidates) {\n  let x = ;\n}\n",
    );
    let (ok, out) = tollgate(&["check"], dir.path());
    assert!(!ok);
    assert!(out.contains("access/a.cel:2:"), "{out}");
    assert!(
        out.contains("access/b.cel: unknown variable 'reqest'"),
        "{out}"
    );
    assert!(out.contains("routing/r.rhai:2:"), "{out}");
    assert!(out.contains("3 error(s)"), "{out}");
}

/// The `tollgate_policy_reloads_total` sample for `result`.
async fn reloads(gw: &Gateway, result: &str) -> f64 {
    let series = format!("tollgate_policy_reloads_total{{result=\"{result}\"}}");
    sample(&gw.metrics().await, &series)
}

/// A reload reads every policy file; reading is not a change. The watcher used to count the
/// reads of its own reload as changes and reloaded the directory every debounce period forever
/// (about five times a second, idle or not).
#[tokio::test]
async fn an_idle_policy_directory_is_not_reloaded() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_with(
        &standard_policy(&mock),
        &[("access/allow.cel", "request.model != \"\"\n")],
        &[],
    );
    let (_, secret) = gw.create_key("*");
    assert_eq!(chat(&gw, &secret, &chat_body("chat")).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reloads(&gw, "unchanged").await, 0.0);
    assert_eq!(reloads(&gw, "ok").await, 1.0);
    // Rewriting a file with the same content is seen, and found unchanged, once.
    write(
        &gw.policies().join("access/allow.cel"),
        "request.model != \"\"\n",
    );
    let started = Instant::now();
    while reloads(&gw, "unchanged").await < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(5), "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reloads(&gw, "unchanged").await, 1.0);
    assert_eq!(reloads(&gw, "ok").await, 1.0);
    let status = gw.admin_policies().await;
    assert_eq!(status["reloads_unchanged"], 1, "{status}");
    assert_eq!(status["reloads_ok"], 1, "{status}");
}
