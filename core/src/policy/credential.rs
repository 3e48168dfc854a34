//! Provider credentials: read from a variable or a file on every load (never logged), and a
//! salted fingerprint of them in the snapshot's content hash so a rotated key is a new set.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::config::CredentialSection;
use super::{Credential, Secret};

/// A digest of a credential's state for the content hash. The secret goes in salted with a
/// random value of this process, so the hash (shown by the admin API and in logs) cannot be used
/// to test guesses of the secret.
pub(super) fn fingerprint(credential: &Credential) -> [u8; 32] {
    static SALT: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let salt = SALT.get_or_init(rand::random);
    let mut hasher = Sha256::new();
    match credential {
        Credential::NotRequired => hasher.update(b"none"),
        Credential::Present(secret) => {
            hasher.update(b"present");
            hasher.update(salt);
            hasher.update(secret.expose().as_bytes());
        }
        Credential::Missing(why) => {
            hasher.update(b"missing");
            hasher.update(why.as_bytes());
        }
    }
    hasher.finalize().into()
}

/// Reads a credential; a source that is configured but empty is not an error at load (the
/// gateway keeps serving other providers) but makes the provider answer
/// `provider_api_key_not_configured`.
pub(super) fn resolve(dir: &Path, section: &CredentialSection) -> Result<Credential, String> {
    match (&section.env, &section.file) {
        (Some(var), None) => Ok(match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => {
                Credential::Present(Secret::new(value.trim().to_string()))
            }
            _ => Credential::Missing(format!("environment variable {var} is not set")),
        }),
        (None, Some(file)) => {
            let path = dir.join(file);
            Ok(match std::fs::read_to_string(&path) {
                Ok(value) if !value.trim().is_empty() => {
                    Credential::Present(Secret::new(value.trim().to_string()))
                }
                Ok(_) => {
                    Credential::Missing(format!("credential file {} is empty", path.display()))
                }
                Err(e) => Credential::Missing(format!(
                    "credential file {} cannot be read: {e}",
                    path.display()
                )),
            })
        }
        _ => Err("set exactly one of 'env' or 'file'".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load::load_dir;

    const GATEWAY_FILE: &str = "gateway.toml";

    #[test]
    fn a_rotated_credential_file_changes_the_content_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(GATEWAY_FILE),
            "[providers.p]\nfamily = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\ncredential = { file = \"secrets/p.key\" }\n",
        )
        .expect("write");
        std::fs::create_dir_all(dir.path().join("secrets")).expect("mkdir");
        let key = dir.path().join("secrets/p.key");
        std::fs::write(&key, "sk-one\n").expect("write");
        let first = load_dir(dir.path(), 1, None).expect("loads");
        std::fs::write(&key, "sk-two\n").expect("write");
        let second = load_dir(dir.path(), 2, Some(&first)).expect("loads");
        assert_ne!(first.content_hash, second.content_hash);
        let Credential::Present(secret) = &second.providers["p"].credential else {
            panic!("credential present");
        };
        assert_eq!(secret.expose(), "sk-two");
        std::fs::write(&key, "sk-one\n").expect("write");
        let third = load_dir(dir.path(), 3, Some(&second)).expect("loads");
        assert_eq!(
            first.content_hash, third.content_hash,
            "same files, same hash"
        );
    }
}
