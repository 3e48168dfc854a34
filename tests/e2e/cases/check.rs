//! `tollgate check`: every shipped policy directory loads; errors name file, line and key.

use std::process::Command;

use crate::common::{bin, repo_root};

fn check(dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(bin()).arg("check").arg(dir).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn every_shipped_policy_directory_passes_check() {
    let mut dirs = vec![repo_root().join("policies")];
    for entry in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.join("gateway.toml").is_file() {
            dirs.push(path);
        } else if path.join("policies/gateway.toml").is_file() {
            dirs.push(path.join("policies"));
        }
    }
    for dir in dirs {
        let (ok, out) = check(&dir);
        assert!(ok, "{} failed check:\n{out}", dir.display());
        assert!(out.contains("ok:"), "{out}");
    }
}

#[test]
fn check_reports_every_error_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[providers.p]\nfamily = \"demo\"\n\n[models.a]\nprovider = \"p\"\n\n[models.b]\nprovider = \"missing\"\n",
    )
    .unwrap();
    let (ok, out) = check(dir.path());
    assert!(!ok);
    assert!(
        out.contains("gateway.toml:8:12: models.b.provider: provider 'missing' is not defined"),
        "{out}"
    );

    std::fs::write(
        dir.path().join("gateway.toml"),
        "[providers.p]\nfamily = \"demo\"\nenabeld = true\n",
    )
    .unwrap();
    let (ok, out) = check(dir.path());
    assert!(!ok);
    assert!(out.contains("gateway.toml:3:1"), "{out}");
    assert!(out.contains("unknown field `enabeld`"), "{out}");

    let (ok, out) = check(&dir.path().join("nope"));
    assert!(!ok);
    assert!(out.contains("cannot read"), "{out}");
}

#[test]
fn serve_refuses_to_start_on_a_broken_policy_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[models.m]\nprovider = \"x\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--policies"])
        .arg(dir.path())
        .args([
            "--database",
            &format!("sqlite://{}/db", dir.path().display()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gateway.toml:2:12"));
}
