//! The one place that turns names and values into SQL text.
//!
//! Most statements take bind parameters and never need this. Utility statements cannot: `CREATE
//! DATABASE`, `CREATE ROLE ... PASSWORD`, `GRANT`, `COMMENT ON` take identifiers and literals in the
//! statement text. Such statements are built with [`Statement`], which accepts only `&'static str`
//! SQL text plus names and values that go through [`quote_ident`] or [`quote_literal`]; nothing from a
//! spec is ever spliced into SQL any other way. sqlx 0.9 refuses dynamic strings unless wrapped in
//! `AssertSqlSafe`; [`Statement`] is the only place this crate does that. Identifiers derived from
//! Kubernetes names come from [`sanitise_identifier`] first.
//!
//! Errors name the problem, never the offending value: a literal may be a password verifier.

use aws_lc_rs::digest;
use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};

/// PostgreSQL truncates identifiers to `NAMEDATALEN - 1` bytes; we refuse instead of truncating, so
/// two long names cannot silently become one.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Hex digits of the input's SHA-256 appended when [`sanitise_identifier`] has to shorten or alter a
/// name: 48 bits keep distinct inputs apart far beyond the thousands of databases on one server.
const HASH_HEX_DIGITS: usize = 12;

/// Why a name or value cannot be put into SQL text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    #[error("an SQL identifier must not be empty")]
    EmptyIdentifier,
    #[error("an SQL identifier must not contain a NUL byte")]
    NulInIdentifier,
    #[error("an SQL identifier is {0} bytes long; PostgreSQL allows at most 63")]
    IdentifierTooLong(usize),
    #[error("an SQL literal must not contain a NUL byte")]
    NulInLiteral,
}

/// Quotes an identifier for PostgreSQL: wraps it in double quotes and doubles any double quote inside.
///
/// Always quoting keeps case and makes reserved words safe. Refuses empty names, NUL bytes (PostgreSQL
/// cannot store them) and names longer than 63 bytes (PostgreSQL would truncate them silently).
pub fn quote_ident(name: &str) -> Result<String, SqlError> {
    if name.is_empty() {
        return Err(SqlError::EmptyIdentifier);
    }
    if name.contains('\0') {
        return Err(SqlError::NulInIdentifier);
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(SqlError::IdentifierTooLong(name.len()));
    }
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for character in name.chars() {
        if character == '"' {
            quoted.push('"');
        }
        quoted.push(character);
    }
    quoted.push('"');
    Ok(quoted)
}

/// Quotes a string literal the way PostgreSQL's own `quote_literal()` does: single quotes doubled, and
/// when a backslash is present the `E'...'` form with backslashes doubled, so the result means the same
/// whatever `standard_conforming_strings` is set to.
pub fn quote_literal(value: &str) -> Result<String, SqlError> {
    if value.contains('\0') {
        return Err(SqlError::NulInLiteral);
    }
    let has_backslash = value.contains('\\');
    let mut quoted = String::with_capacity(value.len() + 3);
    if has_backslash {
        quoted.push('E');
    }
    quoted.push('\'');
    for character in value.chars() {
        match character {
            '\'' => quoted.push_str("''"),
            '\\' => quoted.push_str("\\\\"),
            other => quoted.push(other),
        }
    }
    quoted.push('\'');
    Ok(quoted)
}

/// An SQL statement assembled only from fixed SQL text and quoted identifiers and literals.
///
/// ```
/// # use sfm_migration::postgres::sql::Statement;
/// let statement = Statement::new("ALTER ROLE ")
///     .ident("sfm_oslo_migrator")?
///     .push(" PASSWORD ")
///     .literal("SCRAM-SHA-256$4096:...")?;
/// assert_eq!(statement.as_str(), r#"ALTER ROLE "sfm_oslo_migrator" PASSWORD 'SCRAM-SHA-256$4096:...'"#);
/// # Ok::<(), sfm_migration::postgres::SqlError>(())
/// ```
///
/// Its Debug output shows the length only: a statement may carry a password verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Statement {
    text: String,
}

impl Statement {
    /// Starts a statement with fixed SQL text.
    pub fn new(sql: &'static str) -> Self {
        Statement {
            text: sql.to_owned(),
        }
    }

    /// Appends fixed SQL text.
    pub fn push(mut self, sql: &'static str) -> Self {
        self.text.push_str(sql);
        self
    }

    /// Appends a quoted identifier (see [`quote_ident`]).
    pub fn ident(mut self, name: &str) -> Result<Self, SqlError> {
        self.text.push_str(&quote_ident(name)?);
        Ok(self)
    }

    /// Appends a quoted string literal (see [`quote_literal`]).
    pub fn literal(mut self, value: &str) -> Result<Self, SqlError> {
        self.text.push_str(&quote_literal(value)?);
        Ok(self)
    }

    /// The SQL text, for tests and for code that must show it; never log a statement with a literal.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Debug for Statement {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Statement({} bytes)", self.text.len())
    }
}

impl SqlSafeStr for Statement {
    fn into_sql_str(self) -> SqlStr {
        // Safe by construction: fixed text plus quote_ident/quote_literal output only.
        AssertSqlSafe(self.text).into_sql_str()
    }
}

/// Turns a Kubernetes object name into a PostgreSQL identifier of at most 63 bytes, `prefix` +
/// name + `suffix`, using only `[a-z0-9_]` so it reads well in `psql` (it is still quoted when used).
///
/// Callers pass a short hash of the object's UID in `suffix` (for example `_1a2b3c4d`), so a deleted
/// and recreated object of the same name gets a new database, and a prefix such as `sfm_` so no
/// result can collide with PostgreSQL's reserved `pg_` role names.
///
/// Distinct inputs give distinct outputs: a lowercase DNS-1123 label maps one-to-one (`-` becomes
/// `_`, which such names cannot contain). When the mapping loses information (`.` of a subdomain name,
/// uppercase, other characters) or the result would exceed 63 bytes, the name part is shortened and
/// `_` plus 12 hex digits of the SHA-256 of the full input (`prefix`, name and `suffix`) are appended
/// before the suffix. A deliberate collision would need a name ending in `_` and the right 48-bit hash
/// of another name; the operator's UID tag on each database catches even that.
pub fn sanitise_identifier(k8s_name: &str, prefix: &str, suffix: &str) -> String {
    let (prefix_mapped, _) = map_characters(prefix, true);
    let (name_mapped, name_lossy) = map_characters(k8s_name, false);
    let (suffix_mapped, _) = map_characters(suffix, true);
    let plain_length = prefix_mapped.len() + name_mapped.len() + suffix_mapped.len();
    if !name_lossy && plain_length <= MAX_IDENTIFIER_BYTES {
        return format!("{prefix_mapped}{name_mapped}{suffix_mapped}");
    }

    let mut hasher = digest::Context::new(&digest::SHA256);
    // Each part with its length first, so ("ab", "c") and ("a", "bc") hash differently.
    for part in [prefix, k8s_name, suffix] {
        hasher.update(&(part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let hash = hex::encode(hasher.finish().as_ref());
    let hash = &hash[..HASH_HEX_DIGITS];

    // The prefix and suffix are the caller's fixed parts; only the name is shortened. Should they alone
    // be too long, they are cut as well: the hash still keeps the result unique.
    let budget = MAX_IDENTIFIER_BYTES - 1 - HASH_HEX_DIGITS;
    let mut suffix_kept = suffix_mapped;
    suffix_kept.truncate(budget.min(suffix_kept.len()));
    let mut prefix_kept = prefix_mapped;
    prefix_kept.truncate((budget - suffix_kept.len()).min(prefix_kept.len()));
    let mut name_kept = name_mapped;
    name_kept.truncate((budget - prefix_kept.len() - suffix_kept.len()).min(name_kept.len()));
    format!("{prefix_kept}{name_kept}_{hash}{suffix_kept}")
}

/// Maps a string onto `[a-z0-9_]` (single bytes, so truncation never splits a character): lowercase
/// letters and digits stay, `-` becomes `_`, anything else becomes `_` and marks the mapping lossy.
/// `_` itself is kept in the caller's prefix and suffix; in a name it is lossy, since Kubernetes names
/// cannot contain it and `-` already maps there.
fn map_characters(input: &str, keep_underscore: bool) -> (String, bool) {
    let mut lossy = false;
    let mapped = input
        .chars()
        .map(|character| match character {
            'a'..='z' | '0'..='9' => character,
            '-' => '_',
            '_' if keep_underscore => '_',
            _ => {
                lossy = true;
                '_'
            }
        })
        .collect();
    (mapped, lossy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quote_ident_wraps_and_doubles_double_quotes() {
        assert_eq!(quote_ident("sfm").unwrap(), r#""sfm""#);
        assert_eq!(quote_ident("Mixed Case").unwrap(), r#""Mixed Case""#);
        assert_eq!(quote_ident(r#"a"b"#).unwrap(), r#""a""b""#);
        assert_eq!(
            quote_ident(r#"x"; DROP TABLE y; --"#).unwrap(),
            r#""x""; DROP TABLE y; --""#
        );
    }

    #[test]
    fn quote_ident_refuses_what_postgres_would_mangle() {
        assert_eq!(quote_ident(""), Err(SqlError::EmptyIdentifier));
        assert_eq!(quote_ident("a\0b"), Err(SqlError::NulInIdentifier));
        assert_eq!(quote_ident(&"a".repeat(63)).unwrap().len(), 65);
        assert_eq!(
            quote_ident(&"a".repeat(64)),
            Err(SqlError::IdentifierTooLong(64))
        );
        // Bytes count, not characters: 32 two-byte letters are 64 bytes.
        assert_eq!(
            quote_ident(&"ø".repeat(32)),
            Err(SqlError::IdentifierTooLong(64))
        );
    }

    #[test]
    fn quote_literal_matches_postgres_quote_literal() {
        assert_eq!(quote_literal("abc").unwrap(), "'abc'");
        assert_eq!(quote_literal("O'Brien").unwrap(), "'O''Brien'");
        assert_eq!(quote_literal(r"a\b").unwrap(), r"E'a\\b'");
        assert_eq!(quote_literal("").unwrap(), "''");
        assert_eq!(quote_literal("a\0"), Err(SqlError::NulInLiteral));
    }

    #[test]
    fn error_messages_do_not_echo_the_value() {
        let secret = "SCRAM-SHA-256$4096:c2FsdA==$secret\0";
        let message = quote_literal(secret).unwrap_err().to_string();
        assert!(!message.contains("secret"), "{message}");
    }

    #[test]
    fn statements_quote_their_parts_and_hide_them_from_debug() {
        let statement = Statement::new("CREATE ROLE ")
            .ident("a\"b")
            .unwrap()
            .push(" PASSWORD ")
            .literal("it's")
            .unwrap();
        assert_eq!(statement.as_str(), r#"CREATE ROLE "a""b" PASSWORD 'it''s'"#);
        assert_eq!(format!("{statement:?}"), "Statement(35 bytes)");
        assert_eq!(
            Statement::new("SELECT ").literal("a\0").unwrap_err(),
            SqlError::NulInLiteral
        );
    }

    #[test]
    fn sanitise_keeps_short_kubernetes_names_readable() {
        assert_eq!(
            sanitise_identifier("oslo-legekontor", "sfm_", "_1a2b3c4d"),
            "sfm_oslo_legekontor_1a2b3c4d"
        );
        assert_eq!(sanitise_identifier("a", "", ""), "a");
    }

    #[test]
    fn sanitise_hashes_lossy_names() {
        // `.` and `-` both become `_`, so the dotted name carries a hash and the two stay apart.
        let dashed = sanitise_identifier("a-b", "sfm_", "");
        let dotted = sanitise_identifier("a.b", "sfm_", "");
        assert_eq!(dashed, "sfm_a_b");
        assert_ne!(dashed, dotted);
        assert!(dotted.starts_with("sfm_a_b_"), "{dotted}");
    }

    #[test]
    fn sanitise_shortens_long_names_to_63_bytes_keeping_prefix_and_suffix() {
        let long = "x".repeat(253);
        let identifier = sanitise_identifier(&long, "sfm_", "_owner");
        assert_eq!(identifier.len(), MAX_IDENTIFIER_BYTES);
        assert!(identifier.starts_with("sfm_xxx"), "{identifier}");
        assert!(identifier.ends_with("_owner"), "{identifier}");
        // Two long names that differ only past the cut stay distinct.
        let other = format!("{}y", "x".repeat(252));
        assert_ne!(identifier, sanitise_identifier(&other, "sfm_", "_owner"));
    }

    #[test]
    fn sanitise_survives_absurd_prefixes_and_suffixes() {
        let identifier = sanitise_identifier("db", &"p".repeat(80), &"s".repeat(80));
        assert!(identifier.len() <= MAX_IDENTIFIER_BYTES, "{identifier}");
        assert!(quote_ident(&identifier).is_ok());
    }

    proptest! {
        #[test]
        fn sanitised_identifiers_are_short_quotable_and_plain(name in "[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?") {
            let identifier = sanitise_identifier(&name, "sfm_", "_0123abcd");
            prop_assert!(identifier.len() <= MAX_IDENTIFIER_BYTES);
            prop_assert!(identifier.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            prop_assert!(quote_ident(&identifier).is_ok());
        }

        #[test]
        fn distinct_kubernetes_names_give_distinct_identifiers(
            a in "[a-z0-9]([a-z0-9.-]{0,80}[a-z0-9])?",
            b in "[a-z0-9]([a-z0-9.-]{0,80}[a-z0-9])?",
        ) {
            prop_assume!(a != b);
            prop_assert_ne!(sanitise_identifier(&a, "sfm_", "_x"), sanitise_identifier(&b, "sfm_", "_x"));
        }
    }
}
