//! The policy author's guide cannot rot: its example files form a policy directory that must
//! pass `tollgate check` and `tollgate test`, and every other CEL and Rhai snippet must compile.

use std::path::Path;
use std::process::Command;

use crate::common::{bin, repo_root};

/// Fenced code blocks: (info string, content).
fn blocks(markdown: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in markdown.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.trim().to_string(), String::new())),
            (Some(_), Some(_)) => out.extend(current.take()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

fn tollgate(command: &str, dir: &Path) -> (bool, String) {
    let out = Command::new(bin()).arg(command).arg(dir).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_policy_guide_examples_check_and_pass_their_tests() {
    let guide = std::fs::read_to_string(repo_root().join("docs/policy-guide.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut files = 0;
    let mut snippets = Vec::new();
    for (info, body) in blocks(&guide) {
        let mut parts = info.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("cel" | "rhai" | "toml"), Some(path)) => {
                let path = dir.path().join(path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, body).unwrap();
                files += 1;
            }
            (Some(lang @ ("cel" | "rhai")), None) => snippets.push((lang.to_string(), body)),
            _ => {}
        }
    }
    assert!(
        files >= 6,
        "the guide's example directory has {files} files"
    );
    let (ok, out) = tollgate("check", dir.path());
    assert!(ok, "guide examples fail check:\n{out}");
    let (ok, out) = tollgate("test", dir.path());
    assert!(ok, "guide examples fail their tests:\n{out}");
    assert!(out.contains(" 0 failed"), "{out}");

    assert!(snippets.len() >= 3);
    for (i, (lang, body)) in snippets.iter().enumerate() {
        let scratch = tempfile::tempdir().unwrap();
        std::fs::copy(
            dir.path().join("gateway.toml"),
            scratch.path().join("gateway.toml"),
        )
        .unwrap();
        for sub in ["routing"] {
            let from = dir.path().join(sub);
            std::fs::create_dir_all(scratch.path().join(sub)).unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(
                    entry.path(),
                    scratch.path().join(sub).join(entry.file_name()),
                )
                .unwrap();
            }
        }
        let (folder, ext) = if lang == "cel" {
            ("access", "cel")
        } else {
            ("routing", "rhai")
        };
        std::fs::create_dir_all(scratch.path().join(folder)).unwrap();
        std::fs::write(
            scratch
                .path()
                .join(folder)
                .join(format!("snippet{i}.{ext}")),
            body,
        )
        .unwrap();
        let (ok, out) = tollgate("check", scratch.path());
        assert!(ok, "snippet {i} ({lang}) fails check:\n{body}\n{out}");
    }
}
