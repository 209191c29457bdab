//! The API key format: `trb_<key_id>_<secret>`, or `trb_pub_<key_id>_<secret>`
//! for publishable keys (web pages). A fixed prefix lets secret scanners
//! recognise a leaked key (as GitHub's `ghp_` and Grafana's `glsa_` tokens
//! do); the key id finds the stored record; only SHA-256 of the secret is
//! stored, and the secret is shown once.

use sha2::{Digest as _, Sha256};

pub const PREFIX: &str = "trb_";
pub const PUBLISHABLE_PREFIX: &str = "trb_pub_";
pub const KEY_ID_LEN: usize = 12;
/// 32 characters of [A-Za-z0-9]: about 190 bits.
pub const SECRET_LEN: usize = 32;

const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A key as presented: what it claims to be. Never log `secret`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    pub publishable: bool,
    pub key_id: &'a str,
    pub secret: &'a str,
}

impl std::fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresentedKey")
            .field("publishable", &self.publishable)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Splits a key into its parts; `None` when it is not of our format.
pub fn parse(key: &str) -> Option<PresentedKey<'_>> {
    let (publishable, rest) = match key.strip_prefix(PUBLISHABLE_PREFIX) {
        Some(rest) => (true, rest),
        None => (false, key.strip_prefix(PREFIX)?),
    };
    let (key_id, secret) = rest.split_once('_')?;
    let id_ok = key_id.len() == KEY_ID_LEN && key_id.bytes().all(|b| ID_ALPHABET.contains(&b));
    let secret_ok = secret.len() == SECRET_LEN && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    (id_ok && secret_ok).then_some(PresentedKey {
        publishable,
        key_id,
        secret,
    })
}

/// Whether a key id has our format (`[a-z0-9]{12}`).
pub fn is_key_id(s: &str) -> bool {
    s.len() == KEY_ID_LEN && s.bytes().all(|b| ID_ALPHABET.contains(&b))
}

/// SHA-256 of the secret: what is stored and compared.
pub fn secret_sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Equal hashes, compared in constant time.
pub fn hashes_match(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new key: its id, the whole key (shown once) and the hash to store.
pub struct NewKey {
    pub key_id: String,
    pub key: String,
    pub secret_sha256: [u8; 32],
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no randomness from the operating system: {0}")]
pub struct RandomError(getrandom::Error);

/// Generates a key from the operating system's randomness.
pub fn generate(publishable: bool) -> Result<NewKey, RandomError> {
    let key_id = random_string(ID_ALPHABET, KEY_ID_LEN)?;
    let secret = random_string(SECRET_ALPHABET, SECRET_LEN)?;
    let prefix = if publishable {
        PUBLISHABLE_PREFIX
    } else {
        PREFIX
    };
    Ok(NewKey {
        key: format!("{prefix}{key_id}_{secret}"),
        secret_sha256: secret_sha256(&secret),
        key_id,
    })
}

/// Uniform characters of `alphabet` (rejection sampling: no modulo bias).
fn random_string(alphabet: &[u8], len: usize) -> Result<String, RandomError> {
    let n = alphabet.len();
    let limit = 256 - 256 % n;
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).map_err(RandomError)?;
        for &b in &buf {
            if usize::from(b) < limit && out.len() < len {
                out.push(char::from(alphabet[usize::from(b) % n]));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash() {
        for publishable in [false, true] {
            let new = generate(publishable).unwrap();
            let parsed =
                parse(&new.key).unwrap_or_else(|| panic!("{:?} does not parse", new.key_id));
            assert_eq!(parsed.publishable, publishable);
            assert_eq!(parsed.key_id, new.key_id);
            assert!(hashes_match(
                &secret_sha256(parsed.secret),
                &new.secret_sha256
            ));
            assert!(
                !format!("{new:?}{parsed:?}").contains(parsed.secret),
                "Debug shows no secret"
            );
        }
        let a = generate(false).unwrap();
        let b = generate(false).unwrap();
        assert_ne!(a.key, b.key);
    }

    #[test]
    fn refuses_other_shapes() {
        let good = "trb_abcdefghij12_ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
        assert!(parse(good).is_some());
        for bad in [
            "",
            "Bearer trb_abcdefghij12_ABCDEFGHIJKLMNOPQRSTUVWXYZ012345",
            "trb_abcdefghij1_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456",
            "trb_ABCDEFGHIJ12_ABCDEFGHIJKLMNOPQRSTUVWXYZ012345",
            "trb_abcdefghij12_ABCDEFGHIJKLMNOPQRSTUVWXYZ01234",
            "trb_abcdefghij12_ABCDEFGHIJKLMNOPQRSTUVWXYZ01234-",
            "trb_pub_abcdefghij12",
            "xyz_abcdefghij12_ABCDEFGHIJKLMNOPQRSTUVWXYZ012345",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
        assert!(
            parse("trb_pub_abcdefghij12_ABCDEFGHIJKLMNOPQRSTUVWXYZ012345")
                .is_some_and(|k| k.publishable)
        );
        assert!(!hashes_match(&[1, 2], &[1, 3]));
        assert!(!hashes_match(&[1, 2], &[1]));
    }
}
