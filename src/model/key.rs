//! API keys: who a caller is. The secret a client sends is `exk_<key id>_<64 hex digits>`: the id
//! finds the key, and the SHA-256 of the whole secret must match the stored one.

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// A stored key (never its secret).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKey {
    /// The key's id (also inside its secret).
    pub id: Uuid,
    /// Its owner: the service or person holding it; exports belong to it.
    pub name: String,
    /// Sees and manages every owner's exports.
    pub admin: bool,
    /// The datasets it may export (None: every one).
    pub datasets: Option<Vec<String>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked (None: valid).
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Whether this key sees (and manages) an export owned by `owned_by`: its owner's, or
    /// any with an admin key.
    pub fn may_see(&self, owned_by: &str) -> bool {
        self.admin || owned_by == self.name
    }

    /// Whether this key may export (and list) `dataset`.
    pub fn may_export(&self, dataset: &str) -> bool {
        self.datasets.as_ref().is_none_or(|allowed| allowed.iter().any(|d| d == dataset))
    }

    /// The owner whose exports this key lists (None: every owner's, for an admin key).
    pub fn listed_owner(&self) -> Option<&str> {
        (!self.admin).then_some(self.name.as_str())
    }
}

/// Prefix of every secret (so a leaked one is recognizable, e.g. by secret scanners).
pub const SECRET_PREFIX: &str = "exk_";

/// A new secret for key `id`: 256 random bits from the operating system's generator.
pub fn new_secret(id: Uuid) -> String {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).expect("the operating system's random number generator");
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{SECRET_PREFIX}{}_{hex}", id.simple())
}

/// The key id a secret names, if it has the shape of one.
pub fn key_id(secret: &str) -> Option<Uuid> {
    let rest = secret.strip_prefix(SECRET_PREFIX)?;
    let (id, random) = rest.split_once('_')?;
    (random.len() == 64 && random.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
    Uuid::try_parse(id).ok()
}

/// What is stored of a secret.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `secret` is the one whose digest is `stored` (compared in constant time).
pub fn matches(secret: &str, stored: &[u8]) -> bool {
    let actual = digest(secret);
    stored.len() == actual.len() && stored.iter().zip(actual).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_names_its_key_and_matches_only_its_digest() {
        let id = Uuid::new_v4();
        let secret = new_secret(id);
        assert_eq!(key_id(&secret), Some(id));
        assert!(matches(&secret, &digest(&secret)));
        let mut tampered = secret.clone();
        tampered.replace_range(secret.len() - 1.., if secret.ends_with('0') { "1" } else { "0" });
        assert!(!matches(&tampered, &digest(&secret)));
        assert_ne!(new_secret(id), secret, "random");
        for bad in ["", "exk_", "exk_x_y", "Bearer abc", &secret[..secret.len() - 1]] {
            assert_eq!(key_id(bad), None, "{bad}");
        }
    }
}
