//! Signed download links: `/download/{id}?expires=<unix seconds>&kid=<secret id>&sig=<hex>`,
//! where `sig` is HMAC-SHA256 over `download:{id}:{expires}` with the secret named `kid`. A
//! link works without an API key until it expires; it cannot be altered (another id, a later
//! expiry) without the secret. Several secrets verify, the first signs: rotating adds a new
//! secret first and drops the old one once its links have expired.

use hmac::{KeyInit as _, Mac as _};
use uuid::Uuid;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Shortest secret accepted (characters of `id=secret`'s secret part).
pub const MIN_SECRET_LEN: usize = 32;

/// The secrets links are signed and verified with.
#[derive(Clone)]
pub struct LinkKeys(Vec<(String, Vec<u8>)>);

impl std::fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids only: secrets never reach a log.
        f.debug_tuple("LinkKeys").field(&self.0.iter().map(|(kid, _)| kid).collect::<Vec<_>>()).finish()
    }
}

/// A link's signature parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Id of the secret that signed it.
    pub kid: String,
    /// Hex HMAC-SHA256.
    pub sig: String,
}

impl LinkKeys {
    /// From `id=secret` entries (the first signs); the message names what is wrong.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut keys = Vec::new();
        for entry in entries {
            let (kid, secret) = entry.split_once('=').ok_or("expected id=secret entries, comma-separated")?;
            if kid.is_empty() || !kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(format!("secret id {kid:?}: letters, digits, '-' or '_'"));
            }
            if secret.len() < MIN_SECRET_LEN {
                return Err(format!("secret {kid:?}: at least {MIN_SECRET_LEN} characters"));
            }
            if keys.iter().any(|(k, _)| k == kid) {
                return Err(format!("secret id {kid:?} given twice"));
            }
            keys.push((kid.to_owned(), secret.as_bytes().to_vec()));
        }
        if keys.is_empty() {
            return Err("no secret given".into());
        }
        Ok(Self(keys))
    }

    /// One secret, e.g. the one kept in the database.
    pub fn single(kid: &str, secret: Vec<u8>) -> Self {
        Self(vec![(kid.to_owned(), secret)])
    }

    /// Signs a link to export `id` valid until `expires` (unix seconds), with the first secret.
    pub fn sign(&self, id: Uuid, expires: i64) -> Signature {
        let (kid, secret) = &self.0[0];
        let sig = mac(secret, id, expires).finalize().into_bytes();
        Signature { kid: kid.clone(), sig: sig.iter().map(|b| format!("{b:02x}")).collect() }
    }

    /// Whether `signature` is a valid signature of (`id`, `expires`) by one of the secrets
    /// (compared in constant time).
    pub fn verify(&self, id: Uuid, expires: i64, signature: &Signature) -> bool {
        let Some((_, secret)) = self.0.iter().find(|(kid, _)| *kid == signature.kid) else { return false };
        let Some(sig) = decode_hex(&signature.sig) else { return false };
        mac(secret, id, expires).verify_slice(&sig).is_ok()
    }
}

fn mac(secret: &[u8], id: Uuid, expires: i64) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(format!("download:{id}:{expires}").as_bytes());
    mac
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_verifies_only_unaltered_and_with_a_known_secret() {
        let old = "old=".to_owned() + &"o".repeat(32);
        let new = "new=".to_owned() + &"n".repeat(32);
        let before = LinkKeys::parse(std::slice::from_ref(&old)).unwrap();
        let rotated = LinkKeys::parse(&[new.clone(), old.clone()]).unwrap();
        let id = Uuid::new_v4();
        let signed = before.sign(id, 1_700_000_000);
        assert!(before.verify(id, 1_700_000_000, &signed));
        assert!(rotated.verify(id, 1_700_000_000, &signed), "still valid after a rotation");
        assert_eq!(rotated.sign(id, 1).kid, "new");
        let retired = LinkKeys::parse(&[new]).unwrap();
        assert!(!retired.verify(id, 1_700_000_000, &signed), "not once its secret is dropped");
        assert!(!before.verify(id, 1_700_000_001, &signed), "another expiry");
        assert!(!before.verify(Uuid::new_v4(), 1_700_000_000, &signed), "another export");
        let mut flipped = signed.clone();
        flipped.sig.replace_range(0..1, if signed.sig.starts_with('0') { "1" } else { "0" });
        assert!(!before.verify(id, 1_700_000_000, &flipped));
        for bad in ["", "zz", &signed.sig[..62]] {
            assert!(!before.verify(id, 1_700_000_000, &Signature { kid: "old".into(), sig: bad.into() }));
        }
        for bad in [vec![], vec!["x".to_owned()], vec!["a=short".to_owned()], vec![old.clone(), old]] {
            assert!(LinkKeys::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
