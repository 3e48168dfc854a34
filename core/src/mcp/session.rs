//! Gateway session ids: the upstream's `Mcp-Session-Id`, wrapped and signed so any replica
//! sharing the store can continue the session and no client can forge or move one.
//!
//! Form: `tg1.<hex upstream id>.<hex 128-bit HMAC-SHA256>`, the MAC over the server slug, the
//! key id and the upstream id, keyed by a secret every replica reads from the store. A session
//! id is therefore valid only for the server and the key that opened it.

use sha2::{Digest, Sha256};

const PREFIX: &str = "tg1.";

/// Signs and opens gateway session ids.
#[derive(Clone)]
pub struct SessionKeys {
    secret: Vec<u8>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(***)")
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Compares without an early exit.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl SessionKeys {
    /// Keys from a shared secret.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            secret: secret.to_vec(),
        }
    }

    fn mac(&self, slug: &str, key_id: &str, upstream: &str) -> [u8; 16] {
        let message = format!("{slug}\u{0}{key_id}\u{0}{upstream}");
        let full = hmac_sha256(&self.secret, message.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// The id the client sees for `upstream` on `slug`, opened by `key_id`.
    pub fn seal(&self, slug: &str, key_id: &str, upstream: &str) -> String {
        format!(
            "{PREFIX}{}.{}",
            hex::encode(upstream.as_bytes()),
            hex::encode(self.mac(slug, key_id, upstream))
        )
    }

    /// The upstream id inside a gateway id, if this gateway (or a replica) issued it for this
    /// server and key.
    pub fn open(&self, slug: &str, key_id: &str, sealed: &str) -> Option<String> {
        let rest = sealed.strip_prefix(PREFIX)?;
        let (upstream_hex, mac_hex) = rest.split_once('.')?;
        let upstream = String::from_utf8(hex::decode(upstream_hex).ok()?).ok()?;
        let mac = hex::decode(mac_hex).ok()?;
        same(&mac, &self.mac(slug, key_id, &upstream)).then_some(upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_sealed_id_opens_only_for_its_server_and_key() {
        let keys = SessionKeys::new(b"replica-shared-secret");
        let sealed = keys.seal("everything", "key_a", "f3c1-upstream");
        assert_eq!(
            keys.open("everything", "key_a", &sealed).as_deref(),
            Some("f3c1-upstream")
        );
        assert_eq!(keys.open("everything", "key_b", &sealed), None);
        assert_eq!(keys.open("other", "key_a", &sealed), None);
        assert_eq!(
            SessionKeys::new(b"another-secret").open("everything", "key_a", &sealed),
            None
        );
        let forged = sealed.replace(".", ".0");
        assert_eq!(keys.open("everything", "key_a", &forged), None);
        assert_eq!(keys.open("everything", "key_a", "f3c1-upstream"), None);
    }
}
