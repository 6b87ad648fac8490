//! Sessions without a migration key: NHN's own uploader (`SFM.Importer`, `../shared/sfm-format/
//! nhn-uploader.md`) sends a HelseID access token and nothing else, so the token must name the
//! database.
//!
//! A request without `Sfm-Migration-Key` is taken for the one MigrationDatabase that
//! 1. opts in with `spec.helseIdUploads`,
//! 2. trusts the token's issuer in `spec.validation.helseId`, an issuer this API's own configuration
//!    trusts as well (`--trusted-issuer`),
//! 3. has the organisation number the token names (`orgnr_parent` or `orgnr_child`) and, when the
//!    spec names one, the token's client,
//! 4. allows the token's scheme (DPoP always, Bearer only with `allowBearer`),
//! 5. is in a phase the purpose allows ([`Purpose`]).
//!
//! None is `uploader-no-database` (401), more than one `uploader-ambiguous` (409): the API never
//! guesses which organisation database a file belongs to. The choice reads the token's claims
//! without checking them ([`TokenFacts`]); the chosen database's policy then checks the token in full
//! (signature, issuer, audience, scope, organisation, DPoP proof), so an unverified claim can only
//! pick a database whose checks it must then pass. [`choose`] is the decision, a pure function.
//!
//! Never logs the token or its claims' values.

use std::sync::Arc;

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::ApiError;
use crate::contract::{self, ProblemCode};
use crate::crd::{MigrationDatabase, Phase};

/// The key id recorded (in `migration_key_id`) for what a session without a key wrote: no key.
pub const NO_KEY: &str = "";

/// What the token's claims say, read without checking them: only to pick the database.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenFacts {
    pub issuer: String,
    /// `orgnr_parent` and `orgnr_child`, those present.
    pub organisation_numbers: Vec<String>,
    pub client_id: Option<String>,
    /// Sent as `Authorization: DPoP` (else Bearer).
    pub dpop: bool,
}

#[derive(Deserialize)]
struct UnverifiedClaims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(rename = "client_id", default)]
    client_id: Option<String>,
    #[serde(rename = "helseid://claims/client/claims/orgnr_parent", default)]
    orgnr_parent: Option<String>,
    #[serde(rename = "helseid://claims/client/claims/orgnr_child", default)]
    orgnr_child: Option<String>,
}

/// Whether the request carries a HelseID token at all (`Authorization: Bearer|DPoP ...`).
pub fn has_token(headers: &HeaderMap) -> bool {
    scheme_and_token(headers).is_some()
}

fn scheme_and_token(headers: &HeaderMap) -> Option<(bool, &str)> {
    let value = headers.get(contract::HEADER_AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case(contract::AUTH_SCHEME_DPOP) {
        Some((true, token.trim()))
    } else if scheme.eq_ignore_ascii_case(contract::AUTH_SCHEME_BEARER) {
        Some((false, token.trim()))
    } else {
        None
    }
}

/// The token's claims as it states them; `key-missing` without a token, `token-invalid` when it is
/// no JWT.
pub fn token_facts(headers: &HeaderMap) -> Result<TokenFacts, ApiError> {
    let (dpop, token) = scheme_and_token(headers).ok_or_else(|| {
        ApiError::new(ProblemCode::KeyMissing)
            .detail("send Sfm-Migration-Key, or a HelseID token for a database that accepts uploads without a key")
    })?;
    let claims: UnverifiedClaims = token
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(|| {
            ApiError::new(ProblemCode::TokenInvalid).detail("the access token is not a JWT")
        })?;
    Ok(TokenFacts {
        issuer: claims.iss.unwrap_or_default(),
        organisation_numbers: [claims.orgnr_parent, claims.orgnr_child]
            .into_iter()
            .flatten()
            .collect(),
        client_id: claims.client_id,
        dpop,
    })
}

/// What the session is for, which decides the phases a database may be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// tus requests and verify: a database in staging (`Staging`, `Migrating`, or `Validated`,
    /// where uploads are refused for what they are and verify answers again).
    Write,
    /// `status` and activate: also while it is switched and once it is operational.
    Read,
}

impl Purpose {
    fn allows(self, phase: Option<Phase>) -> bool {
        match phase {
            Some(Phase::Staging | Phase::Migrating | Phase::Validated) => true,
            Some(Phase::Activating | Phase::Operational) => self == Purpose::Read,
            _ => false,
        }
    }
}

/// Whether `database` accepts a request without a key from this token, phase aside.
pub fn accepts(database: &MigrationDatabase, facts: &TokenFacts) -> bool {
    let Some(uploads) = &database.spec.helse_id_uploads else {
        return false;
    };
    let Some(policy) = &database.spec.validation.helse_id else {
        return false;
    };
    let organisation = &database.spec.organisation.organisation_number;
    policy.issuer == facts.issuer
        && facts.organisation_numbers.iter().any(|n| n == organisation)
        && uploads
            .client_id
            .as_ref()
            .is_none_or(|wanted| facts.client_id.as_ref() == Some(wanted))
        && (facts.dpop || uploads.allow_bearer)
}

/// The one database a request without a key is for (see the module's rules).
pub fn choose(
    databases: &[Arc<MigrationDatabase>],
    facts: &TokenFacts,
    trusted_issuers: &[String],
    purpose: Purpose,
) -> Result<Arc<MigrationDatabase>, ApiError> {
    if !trusted_issuers.contains(&facts.issuer) {
        return Err(ApiError::new(ProblemCode::TokenInvalid)
            .detail("the token's issuer is not one this migration API trusts for uploads without a migration key"));
    }
    let mut chosen = databases.iter().filter(|db| {
        accepts(db, facts) && purpose.allows(db.status.as_ref().and_then(|s| s.phase))
    });
    match (chosen.next(), chosen.next()) {
        (Some(database), None) => Ok(database.clone()),
        (None, _) => Err(ApiError::new(ProblemCode::UploaderNoDatabase).detail(
            "no database in staging accepts uploads without a migration key for this token's organisation, client, issuer and token type",
        )),
        (Some(_), Some(_)) => Err(ApiError::new(ProblemCode::UploaderAmbiguous).detail(
            "more than one database in staging accepts uploads without a migration key for this token; an NHN operator must leave only one",
        )),
    }
}

#[cfg(test)]
mod tests;
