//! Session tokens and session ids: how they are made (256 bits from the operating system's
//! CSPRNG), what a well-formed one looks like, and the SHA-256 that is all the store keeps.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::store::TokenHash;

/// What every session token starts with, so a leaked one is recognisable (e.g. by secret
/// scanners).
pub(crate) const TOKEN_PREFIX: &str = "lds_";

/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;

/// Length of a token: the prefix and 43 characters of unpadded url-safe base64.
pub(crate) const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 43;

/// What every session id starts with.
pub(crate) const SESSION_ID_PREFIX: &str = "ses_";

/// Random bytes in a session id (not secret; unique).
const SESSION_ID_BYTES: usize = 16;

/// Length of a session id: the prefix and 22 characters of unpadded url-safe base64.
pub(crate) const SESSION_ID_LEN: usize = SESSION_ID_PREFIX.len() + 22;

fn random_string<const N: usize>(prefix: &str) -> Result<String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Internal(format!("the system random generator failed: {e}")))?;
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// A new token and its hash.
pub(crate) fn new_token() -> Result<(String, TokenHash)> {
    let token = random_string::<TOKEN_BYTES>(TOKEN_PREFIX)?;
    let hash = digest(&token);
    Ok((token, hash))
}

/// A new session id.
pub(crate) fn new_session_id() -> Result<String> {
    random_string::<SESSION_ID_BYTES>(SESSION_ID_PREFIX)
}

fn digest(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `s` is `prefix` followed by the canonical unpadded url-safe base64 of exactly `n`
/// bytes.
fn well_formed(s: &str, prefix: &str, len: usize, n: usize) -> bool {
    s.len() == len
        && s.strip_prefix(prefix)
            .and_then(|body| URL_SAFE_NO_PAD.decode(body).ok())
            .is_some_and(|bytes| bytes.len() == n)
}

/// The hash to look a token up by, or `None` when it cannot be a token Larder made (wrong
/// prefix, length or alphabet). Callers answer both cases alike, as "not found".
pub(crate) fn token_hash(token: &str) -> Option<TokenHash> {
    well_formed(token, TOKEN_PREFIX, TOKEN_LEN, TOKEN_BYTES).then(|| digest(token))
}

/// Whether `id` looks like a session id Larder made.
pub(crate) fn is_session_id(id: &str) -> bool {
    well_formed(id, SESSION_ID_PREFIX, SESSION_ID_LEN, SESSION_ID_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tokens_are_prefixed_url_safe_and_unique() {
        let (a, hash_a) = new_token().unwrap();
        let (b, _) = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert!(
            a[TOKEN_PREFIX.len()..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(token_hash(&a), Some(hash_a));
        assert_ne!(&hash_a[..], a.as_bytes(), "the hash is not the token");
    }

    #[test]
    fn malformed_tokens_have_no_hash() {
        let (good, _) = new_token().unwrap();
        let body = &good[TOKEN_PREFIX.len()..];
        for bad in [
            String::new(),
            "lds_".to_owned(),
            format!("ldx_{body}"),
            format!("{good}A"),
            good[..good.len() - 1].to_owned(),
            format!("lds_{}", "+".repeat(43)),
            format!("lds_{}=", &body[..42]),
            format!("lds_{}", "é".repeat(21)),
        ] {
            assert_eq!(token_hash(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn session_ids_are_checked_like_tokens() {
        let id = new_session_id().unwrap();
        assert_eq!(id.len(), SESSION_ID_LEN);
        assert!(is_session_id(&id));
        assert!(!is_session_id("ses_short"));
        assert!(!is_session_id(&id.replace("ses_", "sex_")));
    }

    proptest! {
        /// Nothing that is not exactly a token Larder could have made gets a hash.
        #[test]
        fn arbitrary_strings_are_not_tokens(s in "\\PC{0,60}") {
            if token_hash(&s).is_some() {
                prop_assert!(s.starts_with(TOKEN_PREFIX) && s.len() == TOKEN_LEN);
                prop_assert_eq!(URL_SAFE_NO_PAD.encode(URL_SAFE_NO_PAD.decode(&s[4..]).unwrap()), &s[4..]);
            }
        }
    }
}
