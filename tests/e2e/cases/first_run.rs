//! The first five minutes: the demo key `./scripts/demo` prints, and the SDK tutorial's crate
//! set up as a user sets it up from a clone.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use mock_upstream::MockConfig;

use crate::common::{Gateway, bin, mock, post_chat, repo_root, standard_policy};

fn demo_key(gw: &Gateway, file: &std::path::Path) -> (String, String) {
    let out = Command::new(bin())
        .args(["keys", "demo", "--database", &gw.db_url, "--file"])
        .arg(file)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

async fn works(gw: &Gateway, secret: &str) -> bool {
    post_chat(gw, secret, "chat").await.status() == 200
}

#[tokio::test]
async fn the_demo_key_is_created_once_printed_on_every_run_and_replaced_when_revoked() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let file = gw.dir.path().join("state/demo-key");
    let (first, note) = demo_key(&gw, &file);
    assert!(first.starts_with("tg_") && first.len() == 43, "{first}");
    assert!(note.contains("created demo key"), "{note}");
    assert!(works(&gw, &first).await, "the printed key works at once");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only its owner reads the kept secret");
    let (again, note) = demo_key(&gw, &file);
    assert_eq!(again, first, "a later run prints the same key");
    assert!(note.contains("kept in"), "{note}");
    let listed = gw.keys(&["list", "--json"]);
    let keys: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1, "no second key was made");
    let id = keys[0]["id"].as_str().unwrap().to_string();
    assert_eq!(keys[0]["name"], "demo");
    assert!(gw.keys(&["revoke", &id]).status.success());
    let (replaced, note) = demo_key(&gw, &file);
    assert_ne!(replaced, first, "a revoked demo key is replaced");
    assert!(note.contains("created demo key"), "{note}");
    assert!(works(&gw, &replaced).await);
    assert!(!works(&gw, &first).await);
}

fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) if info.trim() == "toml" => current = Some(String::new()),
            (None, Some(_)) => current = Some(String::from("#not-toml\n")),
            (Some(_), Some(_)) => {
                if let Some(block) = current.take().filter(|b| !b.starts_with("#not-toml")) {
                    out.push(block);
                }
            }
            (Some(body), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

/// The tutorial's `Cargo.toml` and the example crate agree on everything a build depends on, and
/// both take the SDK by path from a clone (it is not on crates.io): what `./scripts/build-plugins`
/// builds from `examples/custom-guardrail` is what a user following the tutorial builds.
#[test]
fn the_sdk_tutorial_crate_is_the_example_crate_and_resolves_from_a_clone() {
    let tutorial = std::fs::read_to_string(repo_root().join("sdk/README.md")).unwrap();
    let manifest = toml_blocks(&tutorial)
        .into_iter()
        .find(|b| b.contains("[package]"))
        .expect("the tutorial's Cargo.toml");
    let tutorial: toml::Table = toml::from_str(&manifest).unwrap();
    let example: toml::Table = toml::from_str(
        &std::fs::read_to_string(repo_root().join("examples/custom-guardrail/Cargo.toml")).unwrap(),
    )
    .unwrap();
    assert_eq!(tutorial["lib"], example["lib"]);
    assert_eq!(tutorial["dev-dependencies"], example["dev-dependencies"]);
    let (t, e) = (
        tutorial["dependencies"].as_table().unwrap(),
        example["dependencies"].as_table().unwrap(),
    );
    assert_eq!(
        t.keys().collect::<Vec<_>>(),
        e.keys().collect::<Vec<_>>(),
        "same dependencies"
    );
    assert_eq!(t["serde"], e["serde"]);
    for (who, dep) in [
        ("tutorial", &t["tollgate-plugin-sdk"]),
        ("example", &e["tollgate-plugin-sdk"]),
    ] {
        let path = dep
            .get("path")
            .and_then(|p| p.as_str())
            .unwrap_or_else(|| panic!("the {who} takes the SDK by path from a clone: {dep}"));
        assert!(path.ends_with("/sdk"), "{who}: {path}");
        assert!(
            dep.get("version").is_none(),
            "{who}: no registry version until the SDK is published"
        );
    }
    // The example's path really is this clone's SDK, and it builds outside every workspace.
    let sdk = repo_root()
        .join("examples/custom-guardrail")
        .join(e["tollgate-plugin-sdk"]["path"].as_str().unwrap());
    assert_eq!(
        sdk.canonicalize().unwrap(),
        repo_root().join("sdk").canonicalize().unwrap()
    );
    assert!(example.contains_key("workspace"), "a crate of its own");
    assert_eq!(
        tutorial["profile"]["release"]["strip"],
        example["profile"]["release"]["strip"]
    );
    let plugins = std::fs::read_to_string(repo_root().join("plugins/Cargo.toml")).unwrap();
    assert!(!plugins.contains("custom-guardrail"));
    let script = std::fs::read_to_string(repo_root().join("scripts/build-plugins")).unwrap();
    assert!(script.contains("--manifest-path examples/custom-guardrail/Cargo.toml"));
    // And it was built that way: the component the plugin tests load exists.
    assert!(
        repo_root()
            .join("plugins/dist/custom-guardrail.wasm")
            .is_file(),
        "run ./scripts/build-plugins"
    );
}
