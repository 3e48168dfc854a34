//! The README's client examples, run for real against the bundled demo policy directory.

use std::process::Command;

use crate::common::{Gateway, repo_root};

fn demo_gateway() -> (Gateway, String) {
    let gw = Gateway::start_dir(&repo_root().join("policies"));
    let (_, secret) = gw.create_key("*");
    (gw, secret)
}

#[test]
fn the_openai_python_sdk_example_runs_against_the_demo() {
    let have_sdk = Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have_sdk,
        "the openai Python SDK is missing: run ./scripts/test, which installs it"
    );
    let (gw, secret) = demo_gateway();
    let out = Command::new("python3")
        .arg(repo_root().join("examples/quickstart/openai_client.py"))
        .env("TOLLGATE_API_KEY", &secret)
        .env("TOLLGATE_BASE_URL", gw.url("/v1"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("chat: This answer comes from tollgate's offline demo provider"),
        "{stdout}"
    );
    assert!(stdout.contains("stream usage:"), "{stdout}");
    assert!(
        stdout.contains("stream: This answer comes from"),
        "{stdout}"
    );
    assert!(stdout.contains("embedding dimensions: 16"), "{stdout}");
    assert!(
        stdout.contains("models: chat-cheap, chat-eu, chat-failover")
            && stdout.contains("demo-chat, demo-chat-eu"),
        "{stdout}"
    );
}

#[test]
fn the_curl_example_runs_against_the_demo() {
    let (gw, secret) = demo_gateway();
    let out = Command::new("bash")
        .arg(repo_root().join("examples/quickstart/curl.sh"))
        .env("TOLLGATE_API_KEY", &secret)
        .env("TOLLGATE_BASE_URL", gw.url("/v1"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("\"object\":\"chat.completion\""),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("data: [DONE]"), "{stdout}");
}
