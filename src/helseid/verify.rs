//! The migration API's check of a HelseID access token, when a database's policy asks for one.
//!
//! - Signature by a key of the issuer's JWKS (found through its discovery document, cached), with the
//!   `alg` from an allow-list of asymmetric algorithms: `none` and every HMAC algorithm are refused
//!   before any key is touched, so an HMAC token "signed" with the public key never verifies.
//! - `iss`, `aud`, `exp` (with a small leeway), the required scope, and the organisation number
//!   claims (`orgnr_parent` or `orgnr_child`) against the database's organisation.
//! - For `Authorization: DPoP` (RFC 9449): the proof's `typ`, `alg`, embedded public `jwk`, `htm` and
//!   `htu` against this request, `iat` within a window, `ath` (hash of the access token), `jti` not
//!   seen before (replay), and the key's thumbprint equal to the token's `cnf.jkt`. A DPoP-bound token
//!   sent as `Bearer` is refused.
//!
//! Errors say which check failed, never the token, its claims' values or personal data.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use super::DPOP_PROOF_TYP;
use crate::contract::{self, ProblemCode};
use crate::crd::TokenPolicy;

/// The signature algorithms accepted for access tokens and DPoP proofs (asymmetric only).
pub const ALLOWED_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];
/// [`ALLOWED_ALGORITHMS`] as the `algs` parameter of a DPoP challenge (RFC 9449 section 7.1).
pub const DPOP_ALGORITHMS: &str = "RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384";
/// Clock leeway for `exp`/`nbf`, seconds.
pub const LEEWAY_SECONDS: u64 = 30;
/// How far a DPoP proof's `iat` may be from now, seconds.
pub const DPOP_IAT_WINDOW_SECONDS: i64 = 60;
/// How long a JWKS is reused before it is fetched again.
const JWKS_CACHE_FOR: Duration = Duration::from_secs(300);
/// The least time between two fetches of one issuer's keys: a token with an unknown `kid` (anyone can
/// make one) makes at most one fetch per issuer in this time.
const JWKS_REFETCH_AFTER: Duration = Duration::from_secs(30);

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no HelseID access token was sent")]
    Missing,
    #[error("the access token is not valid: {0}")]
    Invalid(&'static str),
    #[error("the DPoP proof is not valid: {0}")]
    InvalidProof(&'static str),
    #[error("the access token lacks the required scope")]
    Scope,
    #[error("the access token's organisation number is not the database's")]
    Organisation,
    #[error("the issuer's keys cannot be fetched")]
    Jwks,
    #[error("this database accepts DPoP-bound tokens only (Authorization: DPoP with a proof)")]
    DpopRequired,
}

impl TokenError {
    pub fn code(&self) -> ProblemCode {
        match self {
            TokenError::Missing => ProblemCode::TokenRequired,
            TokenError::Invalid(_)
            | TokenError::InvalidProof(_)
            | TokenError::Jwks
            | TokenError::DpopRequired => ProblemCode::TokenInvalid,
            TokenError::Scope => ProblemCode::TokenScopeMissing,
            TokenError::Organisation => ProblemCode::TokenOrganisationMismatch,
        }
    }
}

/// What the request looked like, for the token checks (DPoP binds a proof to method and URL).
pub struct RequestFacts<'a> {
    pub method: &'a axum::http::Method,
    pub url: String,
    pub headers: &'a axum::http::HeaderMap,
}

/// What the access token must satisfy.
pub struct Expectations<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub required_scope: Option<&'a str>,
    pub organisation_number: &'a str,
}

/// The claims the API reads from an access token.
#[derive(Debug, Clone, Deserialize)]
pub struct AccessClaims {
    /// Expiry, seconds since the epoch (checked by `jsonwebtoken`; kept for the cache of checked
    /// tokens).
    #[serde(default)]
    pub exp: Option<i64>,
    #[serde(default)]
    pub scope: Option<ScopeClaim>,
    #[serde(rename = "client_id", default)]
    pub client_id: Option<String>,
    #[serde(rename = "helseid://claims/client/claims/orgnr_parent", default)]
    pub orgnr_parent: Option<String>,
    #[serde(rename = "helseid://claims/client/claims/orgnr_child", default)]
    pub orgnr_child: Option<String>,
    #[serde(default)]
    pub cnf: Option<Confirmation>,
}

/// `scope` as a space-separated string or an array (HelseID sends an array).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl ScopeClaim {
    fn contains(&self, scope: &str) -> bool {
        match self {
            ScopeClaim::Text(text) => text.split(' ').any(|s| s == scope),
            ScopeClaim::List(list) => list.iter().any(|s| s == scope),
        }
    }
}

/// `cnf`: the DPoP key's JWK SHA-256 thumbprint.
#[derive(Debug, Clone, Deserialize)]
pub struct Confirmation {
    pub jkt: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ProofClaims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<i64>,
    ath: Option<String>,
    nonce: Option<String>,
}

/// A checked token: who the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub client_id: String,
    pub dpop_bound: bool,
}

fn allowed(alg: Algorithm) -> bool {
    ALLOWED_ALGORITHMS.contains(&alg)
}

/// Checks an access token's signature and claims against a JWKS. Pure: no network, no clock but
/// `jsonwebtoken`'s own for `exp`.
pub fn verify_access_token(
    token: &str,
    jwks: &JwkSet,
    expect: &Expectations<'_>,
) -> Result<AccessClaims, TokenError> {
    let header = decode_header(token)
        .map_err(|_| TokenError::Invalid("the header is not a JWT header with a known alg"))?;
    if !allowed(header.alg) {
        return Err(TokenError::Invalid(
            "the alg is not an allowed asymmetric algorithm",
        ));
    }
    let jwk = match header.kid.as_deref() {
        Some(kid) => jwks.find(kid),
        None if jwks.keys.len() == 1 => jwks.keys.first(),
        None => None,
    }
    .ok_or(TokenError::Invalid(
        "no key of the issuer's JWKS matches the kid",
    ))?;
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|_| TokenError::Invalid("the issuer's key is unusable"))?;
    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.leeway = LEEWAY_SECONDS;
    validation.set_issuer(&[expect.issuer]);
    validation.set_audience(&[expect.audience]);
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let data = decode::<AccessClaims>(token, &key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        TokenError::Invalid(match e.kind() {
            ErrorKind::ExpiredSignature => "it has expired",
            ErrorKind::InvalidIssuer => "the issuer is not the expected one",
            ErrorKind::InvalidAudience => "the audience is not the expected one",
            ErrorKind::InvalidSignature => "the signature does not verify",
            ErrorKind::ImmatureSignature => "it is not valid yet",
            ErrorKind::MissingRequiredClaim(_) => "a required claim (exp, iss, aud) is missing",
            ErrorKind::InvalidAlgorithm => "the alg does not match the key",
            _ => "it cannot be decoded",
        })
    })?;
    let claims = data.claims;
    if let Some(scope) = expect.required_scope
        && !claims.scope.as_ref().is_some_and(|s| s.contains(scope))
    {
        return Err(TokenError::Scope);
    }
    let organisation = [
        claims.orgnr_child.as_deref(),
        claims.orgnr_parent.as_deref(),
    ];
    if !organisation.contains(&Some(expect.organisation_number)) {
        return Err(TokenError::Organisation);
    }
    Ok(claims)
}

/// `jti`s seen in DPoP proofs, kept until their proof could no longer be accepted anyway.
#[derive(Default)]
pub struct ReplayCache {
    seen: Mutex<HashMap<String, Instant>>,
}

impl ReplayCache {
    /// Records `jti`; false if it was seen before (a replay).
    pub fn first_use(&self, jti: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let keep = Duration::from_secs(2 * DPOP_IAT_WINDOW_SECONDS as u64 + LEEWAY_SECONDS);
        if seen.len() > 10_000 {
            seen.retain(|_, at| now.duration_since(*at) < keep);
        }
        match seen.get(jti) {
            Some(at) if now.duration_since(*at) < keep => false,
            _ => {
                seen.insert(jti.to_owned(), now);
                true
            }
        }
    }
}

/// The request a DPoP proof must be bound to.
pub struct ProofContext<'a> {
    pub method: &'a str,
    /// The request URL without query or fragment.
    pub url: &'a str,
    /// The access token the proof comes with (`ath`); `None` at a token endpoint.
    pub access_token: Option<&'a str>,
    /// The token's `cnf.jkt`, when known.
    pub jkt: Option<&'a str>,
    /// Seconds since the epoch.
    pub now: i64,
}

/// SHA-256 JWK thumbprint (RFC 7638), base64url: what `cnf.jkt` holds.
pub fn thumbprint(jwk: &Jwk) -> Result<String, TokenError> {
    jwk.thumbprint(ThumbprintHash::SHA256)
        .map_err(|_| TokenError::InvalidProof("its key has no thumbprint"))
}

/// `ath`: base64url of the SHA-256 of the access token.
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        token.as_bytes(),
    ))
}

fn strip_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// Checks a DPoP proof; returns its key's thumbprint and the `nonce` it carried.
pub fn verify_dpop_proof(
    proof: &str,
    context: &ProofContext<'_>,
    replay: &ReplayCache,
) -> Result<(String, Option<String>), TokenError> {
    let header = decode_header(proof)
        .map_err(|_| TokenError::InvalidProof("the header is not a JWT header with a known alg"))?;
    if header.typ.as_deref() != Some(DPOP_PROOF_TYP) {
        return Err(TokenError::InvalidProof("typ is not dpop+jwt"));
    }
    if !allowed(header.alg) {
        return Err(TokenError::InvalidProof(
            "the alg is not an allowed asymmetric algorithm",
        ));
    }
    let jwk = header
        .jwk
        .as_ref()
        .ok_or(TokenError::InvalidProof("the header carries no jwk"))?;
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|_| TokenError::InvalidProof("its jwk is not a usable public key"))?;
    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = decode::<ProofClaims>(proof, &key, &validation)
        .map_err(|_| TokenError::InvalidProof("the signature does not verify with its jwk"))?
        .claims;
    let jkt = thumbprint(jwk)?;
    if let Some(expected) = context.jkt
        && !contract::digests_equal(&jkt, expected)
    {
        return Err(TokenError::InvalidProof(
            "its key is not the one the token is bound to (cnf.jkt)",
        ));
    }
    if claims.htm.as_deref() != Some(context.method) {
        return Err(TokenError::InvalidProof("htm is not this request's method"));
    }
    if claims.htu.as_deref().map(strip_query) != Some(strip_query(context.url)) {
        return Err(TokenError::InvalidProof("htu is not this request's URL"));
    }
    let iat = claims
        .iat
        .ok_or(TokenError::InvalidProof("iat is missing"))?;
    if (iat - context.now).abs() > DPOP_IAT_WINDOW_SECONDS {
        return Err(TokenError::InvalidProof(
            "iat is outside the accepted window",
        ));
    }
    if let Some(token) = context.access_token {
        let expected = access_token_hash(token);
        if !claims
            .ath
            .as_deref()
            .is_some_and(|ath| contract::digests_equal(ath, &expected))
        {
            return Err(TokenError::InvalidProof(
                "ath is not the hash of the access token",
            ));
        }
    }
    let jti = claims
        .jti
        .clone()
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or(TokenError::InvalidProof("jti is missing"))?;
    if !replay.first_use(&jti) {
        return Err(TokenError::InvalidProof("it was used before (jti replay)"));
    }
    Ok((jkt, claims.nonce))
}

/// The `jti` of a DPoP proof [`verify_dpop_proof`] accepted.
fn proof_jti(proof: &str) -> Option<String> {
    let payload = URL_SAFE_NO_PAD.decode(proof.split('.').nth(1)?).ok()?;
    serde_json::from_slice::<ProofClaims>(&payload).ok()?.jti
}

/// The issuer's discovery document, as far as the API needs it.
#[derive(Deserialize)]
struct Discovery {
    jwks_uri: String,
}

/// Access tokens whose signature and claims passed, with the expectations they passed (NHN's
/// uploader sends the same token with each of a file's three requests, a client with every
/// request): the signature is checked once per token and policy, not once per request. An entry is
/// used only until the token's `exp`; the DPoP proof is checked on every request regardless.
#[derive(Default)]
struct CheckedTokens {
    entries: Mutex<HashMap<[u8; 32], (AccessClaims, i64)>>,
}

/// Most tokens kept checked; past it, the expired ones go, and if that is not enough, all.
const CHECKED_TOKENS_KEPT: usize = 10_000;

impl CheckedTokens {
    /// The cache key: the token and every expectation it was checked against.
    fn key(token: &str, expect: &Expectations<'_>) -> [u8; 32] {
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [
            token,
            expect.issuer,
            expect.audience,
            expect.required_scope.unwrap_or(""),
            expect.organisation_number,
        ] {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part.as_bytes());
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(context.finish().as_ref());
        key
    }

    fn get(&self, token: &str, expect: &Expectations<'_>) -> Option<AccessClaims> {
        let now = chrono::Utc::now().timestamp();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&Self::key(token, expect))
            .filter(|(_, exp)| *exp > now)
            .map(|(claims, _)| claims.clone())
    }

    fn put(&self, token: &str, expect: &Expectations<'_>, claims: &AccessClaims) {
        let Some(exp) = claims.exp else {
            return;
        };
        let now = chrono::Utc::now().timestamp();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CHECKED_TOKENS_KEPT {
            entries.retain(|_, (_, exp)| *exp > now);
            if entries.len() >= CHECKED_TOKENS_KEPT {
                entries.clear();
            }
        }
        entries.insert(Self::key(token, expect), (claims.clone(), exp));
    }
}

/// One issuer's keys as last fetched.
#[derive(Clone)]
struct CachedKeys {
    /// When the keys were last fetched successfully.
    fetched: Instant,
    /// When a fetch was last tried (successful or not): the rate limit.
    tried: Instant,
    set: JwkSet,
}

/// Verifies tokens for the API: fetches and caches each issuer's JWKS, remembers DPoP `jti`s.
///
/// Keys are kept through an issuer outage: when a fetch fails, the last good keys go on verifying
/// (tokens signed before the outage are as good as before). A fetch for an unknown `kid` happens at
/// most once per [`JWKS_REFETCH_AFTER`] per issuer, and no check waits on the lock during a fetch.
pub struct Verifier {
    http: reqwest::Client,
    jwks: Mutex<HashMap<String, CachedKeys>>,
    checked: CheckedTokens,
    cache_for: Duration,
    refetch_after: Duration,
    pub replay: ReplayCache,
}

impl Verifier {
    pub fn new() -> Self {
        Verifier {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            jwks: Mutex::new(HashMap::new()),
            checked: CheckedTokens::default(),
            cache_for: JWKS_CACHE_FOR,
            refetch_after: JWKS_REFETCH_AFTER,
            replay: ReplayCache::default(),
        }
    }

    /// A verifier that reuses keys for `cache_for` instead of [`JWKS_CACHE_FOR`] and fetches them
    /// again at most once per `refetch_after` instead of [`JWKS_REFETCH_AFTER`] (tests).
    pub fn with_timings(cache_for: Duration, refetch_after: Duration) -> Self {
        Verifier {
            cache_for,
            refetch_after,
            ..Verifier::new()
        }
    }

    /// The issuer's JWKS, from its discovery document: cached for [`JWKS_CACHE_FOR`]; with
    /// `refresh` (an unknown `kid`) fetched again unless a fetch was tried within
    /// [`JWKS_REFETCH_AFTER`]; the last good keys when a fetch fails.
    pub async fn jwks(&self, issuer: &str, refresh: bool) -> Result<JwkSet, TokenError> {
        let cached = self
            .jwks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(issuer)
            .cloned();
        if let Some(cached) = &cached {
            let fresh = cached.fetched.elapsed() < self.cache_for;
            let tried_lately = cached.tried.elapsed() < self.refetch_after;
            if (fresh && !refresh) || tried_lately {
                return Ok(cached.set.clone());
            }
        }
        // Mark the try first, so concurrent checks do not all fetch.
        if let Some(entry) = self
            .jwks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(issuer)
        {
            entry.tried = Instant::now();
        }
        match self.fetch_jwks(issuer).await {
            Ok(set) => {
                let now = Instant::now();
                self.jwks.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    issuer.to_owned(),
                    CachedKeys {
                        fetched: now,
                        tried: now,
                        set: set.clone(),
                    },
                );
                Ok(set)
            }
            Err(error) => match cached {
                Some(cached) => Ok(cached.set),
                None => Err(error),
            },
        }
    }

    async fn fetch_jwks(&self, issuer: &str) -> Result<JwkSet, TokenError> {
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let discovery: Discovery = self
            .http
            .get(&discovery_url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|_| TokenError::Jwks)?
            .json()
            .await
            .map_err(|_| TokenError::Jwks)?;
        self.http
            .get(&discovery.jwks_uri)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|_| TokenError::Jwks)?
            .json()
            .await
            .map_err(|_| TokenError::Jwks)
    }

    /// Checks the request's token against the database's policy; returns the HelseID client id.
    pub async fn check_request(
        &self,
        policy: &TokenPolicy,
        organisation_number: &str,
        request: &RequestFacts<'_>,
    ) -> Result<String, TokenError> {
        self.check_request_with_proof(policy, organisation_number, request)
            .await
            .map(|(client, _)| client)
    }

    /// As [`Verifier::check_request`], also returning the `jti` of the DPoP proof checked, if any:
    /// this verifier refuses a `jti` it saw before, and the caller records it where every replica
    /// sees it (one replica's memory does not stop a proof replayed at another).
    pub async fn check_request_with_proof(
        &self,
        policy: &TokenPolicy,
        organisation_number: &str,
        request: &RequestFacts<'_>,
    ) -> Result<(String, Option<String>), TokenError> {
        let authorization = request
            .headers
            .get(contract::HEADER_AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(TokenError::Missing)?;
        let (scheme, token) = authorization
            .split_once(' ')
            .ok_or(TokenError::Invalid("the Authorization header is malformed"))?;
        let dpop = if scheme.eq_ignore_ascii_case(contract::AUTH_SCHEME_DPOP) {
            true
        } else if scheme.eq_ignore_ascii_case(contract::AUTH_SCHEME_BEARER) {
            false
        } else {
            return Err(TokenError::Missing);
        };
        let token = token.trim();
        if policy.require_dpop && !dpop {
            return Err(TokenError::DpopRequired);
        }
        let expect = Expectations {
            issuer: &policy.issuer,
            audience: &policy.audience,
            required_scope: policy.required_scope.as_deref(),
            organisation_number,
        };
        let claims = match self.checked.get(token, &expect) {
            Some(claims) => claims,
            None => {
                let mut jwks = self.jwks(&policy.issuer, false).await?;
                let kid_known = decode_header(token)
                    .ok()
                    .and_then(|h| h.kid)
                    .is_none_or(|kid| jwks.find(&kid).is_some());
                if !kid_known {
                    jwks = self.jwks(&policy.issuer, true).await?;
                }
                let claims = verify_access_token(token, &jwks, &expect)?;
                self.checked.put(token, &expect, &claims);
                claims
            }
        };
        let jkt = claims.cnf.as_ref().and_then(|c| c.jkt.as_deref());
        match (dpop, jkt) {
            (false, Some(_)) => {
                return Err(TokenError::Invalid(
                    "a DPoP-bound token must be sent with the DPoP scheme",
                ));
            }
            (true, None) => {
                return Err(TokenError::Invalid("a DPoP token must carry cnf.jkt"));
            }
            (true, Some(jkt)) => {
                let proof = request
                    .headers
                    .get(contract::HEADER_DPOP)
                    .and_then(|v| v.to_str().ok())
                    .ok_or(TokenError::InvalidProof("no DPoP header was sent"))?;
                let context = ProofContext {
                    method: request.method.as_str(),
                    url: &request.url,
                    access_token: Some(token),
                    jkt: Some(jkt),
                    now: chrono::Utc::now().timestamp(),
                };
                verify_dpop_proof(proof, &context, &self.replay)?;
                return Ok((claims.client_id.unwrap_or_default(), proof_jti(proof)));
            }
            (false, None) => {}
        }
        Ok((claims.client_id.unwrap_or_default(), None))
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}
