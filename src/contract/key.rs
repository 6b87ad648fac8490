//! The migration key as it travels: `sfmk_<keyId>_<secret>`. The operator generates it, the data
//! controller hands it to the client, the client sends it in `Sfm-Migration-Key` (or NHN's uploader in
//! the tus `SessionId` metadata), and the API compares its SHA-256 with the MigrationKey's
//! `status.digest` in constant time.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{ContractError, digests_equal, sha256_hex};

/// Every key starts with this prefix, so secret scanners and humans recognise one.
pub const KEY_PREFIX: &str = "sfmk_";

const KEY_ID_MIN: usize = 8;
const KEY_ID_MAX: usize = 32;
const KEY_ID_GENERATED: usize = 16;
/// 32 random bytes = 256 bits, the floor DESIGN section 3 sets; base64url without padding = 43 chars.
const SECRET_BYTES: usize = 32;
const SECRET_MIN_CHARS: usize = 43;
/// Generous upper bound so a hostile header cannot make the parser decode megabytes.
const SECRET_MAX_CHARS: usize = 128;

/// A parsed migration key. `keyId` (8 to 32 of `a-z0-9`) names the MigrationKey (the API finds it by a
/// label); the secret is base64url without padding of at least 32 random bytes.
///
/// There is no `Display`: the whole token is only available through [`MigrationKeyToken::expose`], and
/// `Debug` shows the key id alone.
#[derive(Clone, PartialEq, Eq)]
pub struct MigrationKeyToken {
    key_id: String,
    secret: String,
}

impl MigrationKeyToken {
    /// A new key with a random key id and a 256-bit random secret (aws-lc-rs's system generator).
    pub fn generate() -> Result<Self, ContractError> {
        const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut id_bytes = [0u8; KEY_ID_GENERATED];
        aws_lc_rs::rand::fill(&mut id_bytes).map_err(|_| ContractError::Random)?;
        // 256 = 7 * 36 + 4: reject the top 4 values so every character is uniformly likely.
        let mut key_id = String::with_capacity(KEY_ID_GENERATED);
        let mut pool = id_bytes.to_vec();
        while key_id.len() < KEY_ID_GENERATED {
            let Some(byte) = pool.pop() else {
                let mut more = [0u8; KEY_ID_GENERATED];
                aws_lc_rs::rand::fill(&mut more).map_err(|_| ContractError::Random)?;
                pool.extend_from_slice(&more);
                continue;
            };
            if usize::from(byte) < 252 {
                key_id.push(char::from(ALPHABET[usize::from(byte) % 36]));
            }
        }
        Self::generate_for(&key_id)
    }

    /// A new key with the given key id (checked) and a 256-bit random secret; for an operator that
    /// derives key ids itself.
    pub fn generate_for(key_id: &str) -> Result<Self, ContractError> {
        check_key_id(key_id)?;
        let mut secret = [0u8; SECRET_BYTES];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| ContractError::Random)?;
        Ok(MigrationKeyToken {
            key_id: key_id.to_owned(),
            secret: URL_SAFE_NO_PAD.encode(secret),
        })
    }

    /// The key id: not a secret, it may be logged and shown.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The whole token `sfmk_<keyId>_<secret>`, for the one place that must send or store it (the
    /// header, the MigrationKey's Secret). Never log it.
    pub fn expose(&self) -> String {
        format!("{KEY_PREFIX}{}_{}", self.key_id, self.secret)
    }

    /// Lowercase hex SHA-256 of the whole token string: what `MigrationKey.status.digest` holds.
    /// Publishing it is safe because the secret has 256 random bits.
    pub fn digest_hex(&self) -> String {
        sha256_hex(self.expose().as_bytes())
    }

    /// Whether this token's digest equals `expected_digest_hex`, compared in constant time.
    pub fn matches_digest(&self, expected_digest_hex: &str) -> bool {
        digests_equal(&self.digest_hex(), expected_digest_hex)
    }
}

fn check_key_id(key_id: &str) -> Result<(), ContractError> {
    if !(KEY_ID_MIN..=KEY_ID_MAX).contains(&key_id.len()) {
        return Err(ContractError::KeyMalformed {
            reason: "the key id must have 8 to 32 characters",
        });
    }
    if !key_id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(ContractError::KeyMalformed {
            reason: "the key id may hold only a-z and 0-9",
        });
    }
    Ok(())
}

impl FromStr for MigrationKeyToken {
    type Err = ContractError;

    /// Parses `sfmk_<keyId>_<secret>` strictly; surrounding whitespace is not trimmed (a header value
    /// arrives trimmed already, and a key pasted with spaces should be fixed where it is pasted).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix(KEY_PREFIX)
            .ok_or(ContractError::KeyMalformed {
                reason: "it must start with sfmk_",
            })?;
        // The key id holds no underscore; the secret (base64url) may.
        let (key_id, secret) = rest.split_once('_').ok_or(ContractError::KeyMalformed {
            reason: "it must read sfmk_<keyId>_<secret>",
        })?;
        check_key_id(key_id)?;
        if !(SECRET_MIN_CHARS..=SECRET_MAX_CHARS).contains(&secret.len()) {
            return Err(ContractError::KeyMalformed {
                reason: "the secret must have 43 to 128 characters",
            });
        }
        let decoded = URL_SAFE_NO_PAD
            .decode(secret)
            .map_err(|_| ContractError::KeyMalformed {
                reason: "the secret must be base64url without padding",
            })?;
        if decoded.len() < SECRET_BYTES {
            return Err(ContractError::KeyMalformed {
                reason: "the secret must hold at least 256 bits",
            });
        }
        Ok(MigrationKeyToken {
            key_id: key_id.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

impl fmt::Debug for MigrationKeyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigrationKeyToken")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "sfmk_abcd1234_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

    #[test]
    fn parses_a_well_formed_key() {
        let token: MigrationKeyToken = SAMPLE.parse().unwrap();
        assert_eq!(token.key_id(), "abcd1234");
        assert_eq!(token.expose(), SAMPLE);
        assert_eq!(token.digest_hex(), sha256_hex(SAMPLE.as_bytes()));
        assert!(token.matches_digest(&sha256_hex(SAMPLE.as_bytes())));
        assert!(!token.matches_digest(&sha256_hex(b"sfmk_other")));
    }

    #[test]
    fn secret_may_contain_underscores_and_dashes() {
        // 0xfbefbe encodes as "----", 0xffffff as "____".
        let mut bytes = [0xfb, 0xef, 0xbe].repeat(6);
        bytes.extend([0xffu8; 15]);
        let secret = URL_SAFE_NO_PAD.encode(&bytes);
        assert!(secret.contains('_') && secret.contains('-'));
        let text = format!("sfmk_abcd1234_{secret}");
        let token: MigrationKeyToken = text.parse().unwrap();
        assert_eq!(token.key_id(), "abcd1234");
        assert_eq!(token.expose(), text);
    }

    #[test]
    fn generated_keys_round_trip_and_differ() {
        let a = MigrationKeyToken::generate().unwrap();
        let b = MigrationKeyToken::generate().unwrap();
        assert_ne!(a, b);
        assert_ne!(a.key_id(), b.key_id());
        assert_eq!(a.key_id().len(), KEY_ID_GENERATED);
        let text = a.expose();
        assert_eq!(text.len(), KEY_PREFIX.len() + KEY_ID_GENERATED + 1 + 43);
        assert_eq!(text.parse::<MigrationKeyToken>().unwrap(), a);
        let fixed = MigrationKeyToken::generate_for("mdb0000001").unwrap();
        assert_eq!(fixed.key_id(), "mdb0000001");
        assert!(MigrationKeyToken::generate_for("UPPER1234").is_err());
    }

    #[test]
    fn malformed_keys_are_rejected() {
        let secret = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
        let cases = [
            String::new(),
            format!("abcd1234_{secret}"),
            format!("SFMK_abcd1234_{secret}"),
            format!("sfmk_abc_{secret}"),
            format!("sfmk_{}_{secret}", "a".repeat(33)),
            format!("sfmk_ABCD1234_{secret}"),
            format!("sfmk_abcd-234_{secret}"),
            "sfmk_abcd1234".to_owned(),
            "sfmk_abcd1234_".to_owned(),
            format!("sfmk_abcd1234_{}", &secret[..42]),
            format!("sfmk_abcd1234_{secret}="),
            format!("sfmk_abcd1234_{}+", &secret[..42]),
            format!("sfmk_abcd1234_{secret} "),
            format!(" sfmk_abcd1234_{secret}"),
            format!("sfmk_abcd1234_{}", "A".repeat(SECRET_MAX_CHARS + 1)),
        ];
        for case in cases {
            assert!(
                case.parse::<MigrationKeyToken>().is_err(),
                "{case:?} must be rejected"
            );
        }
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let token = MigrationKeyToken::generate().unwrap();
        let text = token.expose();
        let secret = &text[KEY_PREFIX.len() + token.key_id().len() + 1..];
        assert!(secret.len() >= 43);
        let debug = format!("{token:?}");
        assert!(!debug.contains(secret), "{debug}");
        assert!(debug.contains(token.key_id()));
        assert!(debug.contains("redacted"));
    }
}
