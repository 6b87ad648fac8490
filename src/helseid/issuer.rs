//! A local issuer that behaves like HelseID for tests and the demo (`sfm-migration-api dev-issuer`),
//! never the network: discovery, JWKS, and a token endpoint for `client_credentials` with a
//! `private_key_jwt` client assertion, DPoP-bound tokens with server nonces (`use_dpop_nonce`), and
//! HelseID's claim names (`client_id`, `helseid://claims/client/claims/orgnr_parent`, ...).
//!
//! It signs with an ES256 key made at start. It is not an identity provider for production.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SecureRandom as _;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use serde::Deserialize;
use serde_json::json;

use super::verify::{ALLOWED_ALGORITHMS, ProofContext, ReplayCache, verify_dpop_proof};
use super::{CLAIM_CLIENT_ID, CLAIM_ORGNR_CHILD, CLAIM_ORGNR_PARENT, CLIENT_ASSERTION_TYPE};

/// The discovery path, relative to the issuer URL.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// The JWKS path.
pub const JWKS_PATH: &str = "/jwks";
/// The token endpoint path (HelseID's own).
pub const TOKEN_PATH: &str = "/connect/token";
/// How long a DPoP nonce stays valid.
const NONCE_LIFETIME: Duration = Duration::from_secs(300);

/// A client the issuer knows: its public key(s) for client assertions, organisation and scopes.
#[derive(Clone, Debug)]
pub struct RegisteredClient {
    pub client_id: String,
    /// Public keys that verify its client assertions.
    pub jwks: JwkSet,
    /// `orgnr_parent`.
    pub organisation_number: String,
    /// `orgnr_child`, when the client acts for a sub-unit.
    pub child_organisation_number: Option<String>,
    /// Scopes it may get.
    pub scopes: Vec<String>,
}

/// How the issuer is set up.
#[derive(Clone, Debug)]
pub struct IssuerConfig {
    /// The `iss` value and the base of every endpoint URL.
    pub issuer_url: String,
    /// The `aud` of issued access tokens.
    pub audience: String,
    pub clients: Vec<RegisteredClient>,
    pub token_lifetime: Duration,
}

/// The issuer: its signing key and what it remembers (nonces, used assertions and proofs).
pub struct Issuer {
    pub config: IssuerConfig,
    signing_key: EncodingKey,
    public_jwk: Jwk,
    nonces: Mutex<HashMap<String, Instant>>,
    assertions: ReplayCache,
    proofs: ReplayCache,
}

const KEY_ID: &str = "sfm-dev-issuer-1";

impl Issuer {
    pub fn new(config: IssuerConfig) -> anyhow::Result<Arc<Self>> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("cannot generate the issuer's key"))?;
        let signing_key = EncodingKey::from_ec_der(pkcs8.as_ref());
        let mut public_jwk = Jwk::from_encoding_key(&signing_key, Algorithm::ES256)?;
        public_jwk.common.key_id = Some(KEY_ID.to_owned());
        Ok(Arc::new(Issuer {
            config,
            signing_key,
            public_jwk,
            nonces: Mutex::new(HashMap::new()),
            assertions: ReplayCache::default(),
            proofs: ReplayCache::default(),
        }))
    }

    /// The public keys, as `/jwks` serves them.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.public_jwk.clone()],
        }
    }

    pub fn token_endpoint(&self) -> String {
        format!(
            "{}{TOKEN_PATH}",
            self.config.issuer_url.trim_end_matches('/')
        )
    }

    fn new_nonce(&self) -> String {
        let mut bytes = [0u8; 24];
        let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes);
        let nonce = URL_SAFE_NO_PAD.encode(bytes);
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        nonces.retain(|_, at| at.elapsed() < NONCE_LIFETIME);
        nonces.insert(nonce.clone(), Instant::now());
        nonce
    }

    fn nonce_valid(&self, nonce: &str) -> bool {
        self.nonces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(nonce)
            .is_some_and(|at| at.elapsed() < NONCE_LIFETIME)
    }

    /// Signs an access token with arbitrary claims (tests use it for tokens the endpoint would never
    /// issue: expired, another audience, ...).
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(KEY_ID.to_owned());
        header.typ = Some("at+jwt".to_owned());
        encode(&header, claims, &self.signing_key).unwrap_or_default()
    }

    /// The claims of a token for `client` as the token endpoint issues them.
    pub fn claims_for(
        &self,
        client: &RegisteredClient,
        scopes: &[String],
        jkt: Option<&str>,
    ) -> serde_json::Value {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "iss": self.config.issuer_url,
            "aud": self.config.audience,
            "iat": now,
            "nbf": now,
            "exp": now + self.config.token_lifetime.as_secs() as i64,
            "jti": uuid::Uuid::new_v4().to_string(),
            CLAIM_CLIENT_ID: client.client_id,
            "scope": scopes,
            CLAIM_ORGNR_PARENT: client.organisation_number,
        });
        if let Some(child) = &client.child_organisation_number {
            claims[CLAIM_ORGNR_CHILD] = child.clone().into();
        }
        if let Some(jkt) = jkt {
            claims["cnf"] = json!({ "jkt": jkt });
        }
        claims
    }
}

/// The issuer's routes: discovery, JWKS, token endpoint.
pub fn router(issuer: Arc<Issuer>) -> Router {
    Router::new()
        .route(DISCOVERY_PATH, get(discovery))
        .route(JWKS_PATH, get(jwks))
        .route(TOKEN_PATH, post(token))
        .with_state(issuer)
}

async fn discovery(State(issuer): State<Arc<Issuer>>) -> Json<serde_json::Value> {
    let base = issuer.config.issuer_url.trim_end_matches('/');
    Json(json!({
        "issuer": issuer.config.issuer_url,
        "jwks_uri": format!("{base}{JWKS_PATH}"),
        "token_endpoint": format!("{base}{TOKEN_PATH}"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256", "ES256"],
        "dpop_signing_alg_values_supported": ["RS256", "PS256", "ES256"],
        "scopes_supported": issuer.config.clients.iter().flat_map(|c| c.scopes.clone()).collect::<Vec<_>>(),
    }))
}

async fn jwks(State(issuer): State<Arc<Issuer>>) -> Json<JwkSet> {
    Json(issuer.jwks())
}

#[derive(Deserialize)]
pub struct TokenRequest {
    grant_type: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_assertion_type: Option<String>,
    #[serde(default)]
    client_assertion: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    jti: Option<String>,
}

async fn token(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    Form(request): Form<TokenRequest>,
) -> Response {
    if request.grant_type != "client_credentials" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only client_credentials",
        );
    }
    if request.client_assertion_type.as_deref() != Some(CLIENT_ASSERTION_TYPE) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "private_key_jwt client assertion required",
        );
    }
    let Some(assertion) = request.client_assertion.as_deref() else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "client_assertion missing",
        );
    };
    // The client: named by client_id, or by the assertion's issuer.
    let claimed_id = request.client_id.clone().or_else(|| {
        jsonwebtoken::dangerous::insecure_decode::<AssertionClaims>(assertion)
            .ok()
            .map(|d| d.claims.iss)
    });
    let Some(client) = claimed_id.and_then(|id| {
        issuer
            .config
            .clients
            .iter()
            .find(|c| c.client_id == id)
            .cloned()
    }) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    };
    let Ok(header) = decode_header(assertion) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "the client assertion is not a JWT",
        );
    };
    if !ALLOWED_ALGORITHMS.contains(&header.alg) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "the client assertion's alg is not allowed",
        );
    }
    let jwk = header
        .kid
        .as_deref()
        .and_then(|kid| client.jwks.find(kid))
        .or(if client.jwks.keys.len() == 1 {
            client.jwks.keys.first()
        } else {
            None
        });
    let Some(key) = jwk.and_then(|jwk| DecodingKey::from_jwk(jwk).ok()) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "no registered key matches the client assertion",
        );
    };
    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.set_audience(&[issuer.config.issuer_url.clone(), issuer.token_endpoint()]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let claims = match decode::<AssertionClaims>(assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(_) => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "the client assertion does not verify",
            );
        }
    };
    if claims.iss != client.client_id || claims.sub != client.client_id {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "iss and sub must be the client id",
        );
    }
    match claims.jti.as_deref() {
        Some(jti) if issuer.assertions.first_use(jti) => {}
        _ => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "the client assertion lacks a fresh jti",
            );
        }
    }

    let scopes: Vec<String> = match &request.scope {
        Some(scope) => scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        None => client.scopes.clone(),
    };
    if scopes.iter().any(|s| !client.scopes.contains(s)) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "a scope is not allowed for this client",
        );
    }

    // DPoP: a proof must carry a nonce this issuer gave out.
    let mut jkt = None;
    if let Some(proof) = headers.get("dpop").and_then(|v| v.to_str().ok()) {
        let endpoint = issuer.token_endpoint();
        let context = ProofContext {
            method: "POST",
            url: &endpoint,
            access_token: None,
            jkt: None,
            now: chrono::Utc::now().timestamp(),
        };
        match verify_dpop_proof(proof, &context, &issuer.proofs) {
            Ok((thumbprint, nonce)) => {
                if !nonce.as_deref().is_some_and(|n| issuer.nonce_valid(n)) {
                    let mut response = oauth_error(
                        StatusCode::BAD_REQUEST,
                        "use_dpop_nonce",
                        "the DPoP proof must carry the nonce in DPoP-Nonce",
                    );
                    if let Ok(value) = HeaderValue::from_str(&issuer.new_nonce()) {
                        response.headers_mut().insert("dpop-nonce", value);
                    }
                    return response;
                }
                jkt = Some(thumbprint);
            }
            Err(error) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_dpop_proof",
                    &error.to_string(),
                );
            }
        }
    }
    let access_token = issuer.sign(&issuer.claims_for(&client, &scopes, jkt.as_deref()));
    let mut response = Json(json!({
        "access_token": access_token,
        "token_type": if jkt.is_some() { "DPoP" } else { "Bearer" },
        "expires_in": issuer.config.token_lifetime.as_secs(),
        "scope": scopes.join(" "),
    }))
    .into_response();
    if jkt.is_some()
        && let Ok(value) = HeaderValue::from_str(&issuer.new_nonce())
    {
        response.headers_mut().insert("dpop-nonce", value);
    }
    response
}

/// Serves the issuer on `listen` until the process stops.
pub async fn serve(issuer: Arc<Issuer>, listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, issuer = %issuer.config.issuer_url, "development HelseID issuer listening");
    axum::serve(listener, router(issuer)).await?;
    Ok(())
}
