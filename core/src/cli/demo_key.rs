//! `tollgate keys demo`: the demo's own key, so a first run hands the user a working key at
//! once. Created in the store on first use (every model and MCP server granted, no expiry), its
//! secret kept in a file readable only by its owner (default `<data-dir>/demo-key`), and
//! printed on every later run while it still works; a revoked or expired demo key (or a store
//! that no longer knows it) is replaced by a new one. For demos and local trials: a production
//! key's secret is shown once and kept nowhere (`tollgate keys create`).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::Context;

use crate::clock::now_ms;
use crate::store::keys::{KeyState, NewKey, hash_secret, looks_like_secret};
use crate::store::{ModelGrant, Store};

/// Prints the demo key's secret on stdout (alone on its line, for scripts), creating it if
/// the store has no working one; says on stderr which it was.
pub async fn run(store: &Store, file: &Path) -> anyhow::Result<()> {
    if let Ok(text) = std::fs::read_to_string(file) {
        let secret = text.trim();
        if looks_like_secret(secret)
            && let Some(key) = store.key_by_hash(&hash_secret(secret)).await?
            && key.state(now_ms()) == KeyState::Active
        {
            eprintln!(
                "demo key {} ({}), kept in {}",
                key.id,
                key.name,
                file.display()
            );
            println!("{secret}");
            return Ok(());
        }
    }
    let (key, secret) = store
        .create_key(&NewKey {
            name: "demo".into(),
            team: None,
            owner: None,
            metadata: serde_json::Map::new(),
            models: ModelGrant::All,
            mcp: ModelGrant::All,
            expires_at_ms: None,
        })
        .await?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Replace the file whole, readable by its owner only.
    let tmp = file.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    writeln!(out, "{secret}").with_context(|| format!("writing {}", tmp.display()))?;
    drop(out);
    std::fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))?;
    eprintln!(
        "created demo key {} ({}), kept in {}",
        key.id,
        key.name,
        file.display()
    );
    println!("{secret}");
    Ok(())
}
