//! SCRAM-SHA-256 password verifiers, computed the way PostgreSQL computes them, and the passwords they
//! protect.
//!
//! The operator sends `CREATE ROLE ... PASSWORD '<verifier>'` rather than the password, so no password
//! ever reaches the server, its logs or `pg_stat_activity` (DESIGN section 4). PostgreSQL stores a
//! string of that shape as it is.
//!
//! PostgreSQL runs SASLprep (RFC 4013) over a password before hashing it; this module does not. That is
//! correct only for passwords that SASLprep leaves unchanged: [`generate_password`] draws from ASCII
//! letters and digits, for which SASLprep is the identity. Do not feed other passwords to
//! [`scram_sha256_verifier`].
//!
//! Nothing here may log, print or put into an error a password, a salt or a key.

use std::num::NonZeroU32;

use aws_lc_rs::{constant_time, digest, hmac, pbkdf2};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::Rng as _;
use rand::distributions::Alphanumeric;

/// PostgreSQL's default (`scram_iterations` is 4096 in PostgreSQL 15 and later versions).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// PostgreSQL generates 16-byte salts (`SCRAM_DEFAULT_SALT_LEN`).
pub const SALT_BYTES: usize = 16;

/// 40 letters and digits: log2(62^40) is about 238 bits.
pub const PASSWORD_LENGTH: usize = 40;

/// Returns a new random password of ASCII letters and digits, for which PostgreSQL's SASLprep is a no-op
/// and which needs no escaping in a connection URI.
pub fn generate_password() -> String {
    // rand's thread RNG is a CSPRNG seeded from the OS.
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(PASSWORD_LENGTH)
        .map(char::from)
        .collect()
}

/// Computes the verifier PostgreSQL stores for `password` with this salt and iteration count:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64 with padding (RFC 5802, RFC 7677).
///
/// `password` must be one SASLprep leaves unchanged (see the module documentation).
///
/// # Panics
/// When `iterations` is 0, a programming error: PostgreSQL itself never uses fewer than one.
pub fn scram_sha256_verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    let iterations_nonzero =
        NonZeroU32::new(iterations).expect("SCRAM iteration count must be at least 1");
    let mut salted_password = [0u8; digest::SHA256_OUTPUT_LEN];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations_nonzero,
        salt,
        password.as_bytes(),
        &mut salted_password,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted_password);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        BASE64.encode(salt),
        BASE64.encode(stored_key.as_ref()),
        BASE64.encode(server_key.as_ref()),
    )
}

/// A verifier for `password` with a fresh random salt and [`DEFAULT_ITERATIONS`].
pub fn new_scram_sha256_verifier(password: &str) -> String {
    let mut salt = [0u8; SALT_BYTES];
    rand::thread_rng().fill(&mut salt);
    scram_sha256_verifier(password, &salt, DEFAULT_ITERATIONS)
}

/// The parameters of a stored verifier: what is needed to recompute it for a candidate password.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierParameters {
    pub iterations: u32,
    pub salt: Vec<u8>,
}

// The salt is not secret by itself, but keep Debug output free of anything password-derived.
impl std::fmt::Debug for VerifierParameters {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("VerifierParameters")
            .field("iterations", &self.iterations)
            .field("salt_bytes", &self.salt.len())
            .finish()
    }
}

/// Reads iteration count and salt from a verifier as PostgreSQL stores it in `pg_authid.rolpassword`;
/// `None` when the string is not a SCRAM-SHA-256 verifier (an md5 hash, say).
pub fn parse_scram_sha256_verifier(verifier: &str) -> Option<VerifierParameters> {
    let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
    let (parameters, keys) = rest.split_once('$')?;
    let (iterations, salt) = parameters.split_once(':')?;
    let (stored_key, server_key) = keys.split_once(':')?;
    let iterations: u32 = iterations.parse().ok().filter(|&count| count > 0)?;
    let salt = BASE64.decode(salt).ok()?;
    let key_lengths_ok = [stored_key, server_key].iter().all(|key| {
        BASE64
            .decode(key)
            .is_ok_and(|bytes| bytes.len() == digest::SHA256_OUTPUT_LEN)
    });
    key_lengths_ok.then_some(VerifierParameters { iterations, salt })
}

/// Whether `verifier` was made from `password`, compared in constant time. The operator uses it to
/// check that a role's stored verifier still matches the password in its Secret, without resetting it.
pub fn scram_sha256_verifier_matches(verifier: &str, password: &str) -> bool {
    let Some(parameters) = parse_scram_sha256_verifier(verifier) else {
        return false;
    };
    let expected = scram_sha256_verifier(password, &parameters.salt, parameters.iterations);
    constant_time::verify_slices_are_equal(expected.as_bytes(), verifier.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by PostgreSQL 15.18 itself (`SET password_encryption = 'scram-sha-256'; CREATE ROLE ...
    /// PASSWORD 'correct horse battery staple'`, then `rolpassword` from `pg_authid`).
    const POSTGRES_PASSWORD: &str = "correct horse battery staple";
    const POSTGRES_VERIFIER: &str = include_str!("scram_known_verifier.txt");

    #[test]
    fn matches_a_verifier_postgresql_made() {
        let verifier = POSTGRES_VERIFIER.trim();
        let parameters = parse_scram_sha256_verifier(verifier).expect("a SCRAM verifier");
        assert_eq!(parameters.iterations, 4096);
        assert_eq!(parameters.salt.len(), 16);
        assert_eq!(
            scram_sha256_verifier(POSTGRES_PASSWORD, &parameters.salt, parameters.iterations),
            verifier
        );
        assert!(scram_sha256_verifier_matches(verifier, POSTGRES_PASSWORD));
        assert!(!scram_sha256_verifier_matches(
            verifier,
            "correct horse battery stapler"
        ));
    }

    #[test]
    fn matches_the_rfc_7677_example() {
        // RFC 7677 section 3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, i=4096.
        // The RFC gives the exchange, not the stored keys. These were computed with Python's hashlib
        // and PostgreSQL 15 accepts the password "pencil" for a role created with this verifier.
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let verifier = scram_sha256_verifier("pencil", &salt, 4096);
        assert_eq!(
            verifier,
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
    }

    #[test]
    fn fresh_verifiers_use_new_salts_and_still_verify() {
        let password = generate_password();
        let first = new_scram_sha256_verifier(&password);
        let second = new_scram_sha256_verifier(&password);
        assert_ne!(first, second);
        assert!(scram_sha256_verifier_matches(&first, &password));
        assert!(scram_sha256_verifier_matches(&second, &password));
    }

    #[test]
    fn generated_passwords_are_ascii_alphanumeric_and_distinct() {
        let password = generate_password();
        assert_eq!(password.len(), PASSWORD_LENGTH);
        assert!(password.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(password, generate_password());
    }

    #[test]
    fn parse_refuses_what_is_not_a_scram_verifier() {
        assert_eq!(
            parse_scram_sha256_verifier("md5d8578edf8458ce06fbc5bb76a58c5ca4"),
            None
        );
        assert_eq!(
            parse_scram_sha256_verifier("SCRAM-SHA-256$0:AAAA$AAAA:AAAA"),
            None
        );
        assert_eq!(
            parse_scram_sha256_verifier("SCRAM-SHA-256$4096:AAAA$short:short"),
            None
        );
        assert!(!scram_sha256_verifier_matches("not a verifier", "anything"));
    }

    #[test]
    fn debug_shows_no_salt() {
        let parameters = VerifierParameters {
            iterations: 4096,
            salt: vec![0xAB; 16],
        };
        let shown = format!("{parameters:?}");
        assert!(shown.contains("4096") && !shown.contains("171"), "{shown}");
    }
}
