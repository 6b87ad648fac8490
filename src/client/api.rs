//! The HTTP side of the client: one [`ApiClient`] for the migration API's JSON endpoints (product
//! version, key check, status, verify, activate) and the tus requests ([`super::tus`]), with the
//! migration key and, when logged in, the HelseID token (Bearer, or DPoP with a fresh proof per
//! request and the server's nonce). Errors become [`ApiError`], and [`ApiError::failure`] turns each
//! into one sentence and what to do next.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

use super::config::StoredToken;
use super::{Failure, Outcome};
use crate::contract::{
    self, ActivateResponse, KeyCheckResponse, Manifest, MigrationStatus, Problem, ProblemCode,
    ProductVersion, VerifyResponse,
};
use crate::helseid::client::DpopKey;

/// How the client authenticates: the migration key, and a HelseID token when logged in. Without a
/// key, the token alone (a database that accepts uploads without a key: NHN's uploader's way).
pub struct Auth {
    key: Option<String>,
    token: Option<StoredToken>,
    dpop: Option<DpopKey>,
    nonce: Mutex<Option<String>>,
}

impl Auth {
    /// `key` is the whole migration key, if any; `token` the stored HelseID token, if any.
    pub fn new(key: Option<String>, token: Option<StoredToken>) -> Outcome<Self> {
        let dpop = match token.as_ref().and_then(|t| t.dpop_key_pem.as_deref()) {
            Some(pem) => Some(DpopKey::from_pem(pem).map_err(|e| {
                Failure::new(
                    format!("The stored DPoP key is unusable ({e})."),
                    "log in again with `sfm-migrate login`",
                )
            })?),
            None => None,
        };
        if let Some(token) = &token
            && token.is_expired()
        {
            return Err(Failure::new(
                "Your HelseID access token has expired.",
                "log in again with `sfm-migrate login`",
            ));
        }
        Ok(Auth {
            key,
            token,
            dpop,
            nonce: Mutex::new(None),
        })
    }

    /// Whether a HelseID token is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether a migration key is configured.
    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    fn apply(&self, request: RequestBuilder, method: &Method, url: &Url) -> RequestBuilder {
        let mut request = request;
        if let Some(key) = &self.key {
            request = request.header(contract::HEADER_MIGRATION_KEY, key);
        }
        if let Some(token) = &self.token {
            match &self.dpop {
                Some(dpop) if token.token_type.eq_ignore_ascii_case("dpop") => {
                    let nonce = self.nonce.lock().ok().and_then(|n| n.clone());
                    if let Ok(proof) = dpop.proof(
                        method.as_str(),
                        url.as_str(),
                        Some(&token.access_token),
                        nonce.as_deref(),
                    ) {
                        request = request.header(contract::HEADER_DPOP, proof);
                    }
                    request = request.header(
                        contract::HEADER_AUTHORIZATION,
                        format!("{} {}", contract::AUTH_SCHEME_DPOP, token.access_token),
                    );
                }
                _ => {
                    request = request.header(
                        contract::HEADER_AUTHORIZATION,
                        format!("{} {}", contract::AUTH_SCHEME_BEARER, token.access_token),
                    );
                }
            }
        }
        request
    }

    fn observe(&self, headers: &HeaderMap) {
        if let Some(nonce) = headers
            .get(contract::HEADER_DPOP_NONCE)
            .and_then(|v| v.to_str().ok())
            && let Ok(mut slot) = self.nonce.lock()
        {
            *slot = Some(nonce.to_owned());
        }
    }
}

/// A refused or failed request.
#[derive(Debug, Clone)]
pub enum ApiError {
    /// No HTTP answer: connection refused, DNS, TLS, timeout.
    Network { url: String, reason: String },
    /// An HTTP error status, with the problem body when there was one.
    Status {
        status: u16,
        problem: Option<Box<Problem>>,
        retry_after: Option<u64>,
    },
    /// A 2xx answer the client could not read.
    Protocol(String),
}

impl ApiError {
    /// The problem code, when the API sent one.
    pub fn code(&self) -> Option<ProblemCode> {
        match self {
            ApiError::Status {
                problem: Some(p), ..
            } => Some(p.code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the same request may succeed later: network trouble, 5xx, 429, `busy`,
    /// `organisation-missing` with `Retry-After` (the organisation file is being ingested),
    /// `dpop-nonce-required`.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Network { .. } => true,
            ApiError::Protocol(_) => false,
            ApiError::Status {
                status,
                problem,
                retry_after,
            } => {
                let code = problem.as_ref().map(|p| p.code);
                // `organisation-missing` is worth waiting for only while the organisation file is
                // being ingested (the API then sends Retry-After); otherwise it never comes.
                matches!(
                    code,
                    Some(ProblemCode::Busy) | Some(ProblemCode::DpopNonceRequired)
                ) || (code == Some(ProblemCode::OrganisationMissing) && retry_after.is_some())
                    || *status == 429
                    || *status >= 500
            }
        }
    }

    /// What `Retry-After` asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } => retry_after.map(Duration::from_secs),
            _ => None,
        }
    }

    /// One sentence and what to do next.
    pub fn failure(&self) -> Failure {
        let resume = "run the same command again; it resumes where it stopped";
        match self {
            ApiError::Network { url, reason } => Failure::new(
                format!("Cannot reach the migration API at {url} ({reason})."),
                format!(
                    "check the address given with --api, your network and proxy, then {resume}"
                ),
            ),
            ApiError::Protocol(what) => Failure::new(
                format!(
                    "The migration API answered in a way this client does not understand ({what})."
                ),
                "check that --api points at NHN's migration API and that this client is up to date",
            ),
            ApiError::Status {
                status, problem, ..
            } => {
                let detail = problem
                    .as_ref()
                    .and_then(|p| p.detail.clone())
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                let Some(problem) = problem else {
                    return Failure::new(
                        format!("The migration API answered HTTP {status} without an explanation."),
                        "check that --api points at NHN's migration API; if it does, try again later or contact NHN",
                    );
                };
                use ProblemCode as C;
                let (what, next): (String, String) = match problem.code {
                    C::KeyMissing | C::KeyMalformed => (
                        "The migration API did not accept the form of your migration key.".into(),
                        "register the key exactly as NHN gave it with `sfm-migrate key add`".into(),
                    ),
                    C::KeyUnknown | C::KeyWrong => (
                        "The migration API does not know your migration key (wrong key).".into(),
                        "check with `sfm-migrate key list` that the active key is the one NHN gave you for this database, and that --api is the right API".into(),
                    ),
                    C::KeyExpired => (
                        "Your migration key has expired.".into(),
                        format!("ask NHN for a new key, add it with `sfm-migrate key add`, then {resume}"),
                    ),
                    C::KeySuperseded => (
                        "A newer migration key has replaced the one you used.".into(),
                        "register the newer key NHN gave you with `sfm-migrate key add` and select it with `sfm-migrate key use`".into(),
                    ),
                    C::KeyRevoked => (
                        "NHN has revoked your migration key.".into(),
                        "contact NHN for a new key".into(),
                    ),
                    C::KeyWrongDatabase => (
                        "Your migration key belongs to another database than these uploads.".into(),
                        "select the key for this organisation with `sfm-migrate key use`".into(),
                    ),
                    C::TokenRequired => (
                        "This database requires a HelseID login.".into(),
                        "log in with `sfm-migrate login`, then run the same command again".into(),
                    ),
                    C::TokenInvalid | C::DpopNonceRequired => (
                        format!("The migration API refused your HelseID token{detail}."),
                        "log in again with `sfm-migrate login`".into(),
                    ),
                    C::TokenScopeMissing => (
                        "Your HelseID token lacks the scope for the migration API.".into(),
                        "ask for the migration scope on your HelseID client, then log in again".into(),
                    ),
                    C::TokenOrganisationMismatch => (
                        "Your HelseID token belongs to another organisation than this database.".into(),
                        "log in with your own organisation's HelseID client".into(),
                    ),
                    C::MigrationValidated => (
                        "This migration is already verified, so no more files can be sent.".into(),
                        "activate it with `sfm-migrate activate`".into(),
                    ),
                    C::MigrationOperational => (
                        "The database is operational, or being switched to it; the migration is over.".into(),
                        "nothing more to send; `sfm-migrate activate` deletes the export files".into(),
                    ),
                    C::NotValidated => (
                        "The migration is not verified yet, so it cannot be activated.".into(),
                        "run `sfm-migrate verify` first".into(),
                    ),
                    C::UploadTooLarge => (
                        format!("A file is larger than the migration API accepts{detail}."),
                        "ask your EPJ supplier about the file; NHN can tell you the limit".into(),
                    ),
                    C::OrganisationMissing => (
                        "The organisation file is not stored yet, so patients cannot be sent.".into(),
                        format!("wait a minute, then {resume}"),
                    ),
                    C::Busy => (
                        "The migration API is too busy right now.".into(),
                        format!("wait a few minutes (or use fewer --workers), then {resume}"),
                    ),
                    C::ManifestInvalid => (
                        format!("The migration API refused the manifest{detail}."),
                        "run `sfm-migrate check` on the folder; if it passes, report this message to NHN".into(),
                    ),
                    C::TusVersionUnsupported | C::HeaderInvalid | C::MetadataInvalid
                    | C::ContentTypeInvalid | C::ChecksumAlgorithmUnsupported => (
                        format!("The migration API refused a request of this client{detail}."),
                        "update sfm-migrate to the version NHN recommends".into(),
                    ),
                    _ if *status >= 500 => (
                        format!("The migration API failed (HTTP {status}{detail})."),
                        format!("try again later ({resume}); if it persists, contact NHN and give them the time"),
                    ),
                    code => (
                        format!("The migration API refused the request: {} ({code}){detail}.", problem.title),
                        "if the message does not say what to change, contact NHN with it".into(),
                    ),
                };
                Failure::new(what, next)
            }
        }
    }
}

/// The migration API at one base URL.
pub struct ApiClient {
    pub base: Url,
    http: reqwest::Client,
    pub auth: Auth,
}

fn retry_after(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(contract::HEADER_RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(contract::parse_retry_after)
}

impl ApiClient {
    /// A client for the API at `base` (e.g. `https://migrering.sfm.nhn.no`).
    pub fn new(base: &str, auth: Auth, pool_size: usize) -> Outcome<Self> {
        let mut base = Url::parse(base).map_err(|_| {
            Failure::new(
                format!("{base:?} is not a URL."),
                "give the migration API's address with --api, e.g. https://migrering.example.no",
            )
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Failure::new(
                "The migration API's address must start with https:// (or http:// for a local test).",
                "give the address with --api",
            ));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(600))
            .pool_max_idle_per_host(pool_size.max(1))
            .user_agent(concat!("sfm-migrate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Failure::new(
                    format!("Cannot set up HTTPS ({e})."),
                    "check the system's TLS configuration",
                )
            })?;
        Ok(ApiClient { base, http, auth })
    }

    /// `path` (absolute, like `/api/v1/status`) under the base URL.
    pub fn url(&self, path: &str) -> Url {
        self.base
            .join(path.trim_start_matches('/'))
            .unwrap_or_else(|_| self.base.clone())
    }

    /// Sends one request built by `build` with authentication; retries once on a DPoP nonce
    /// challenge. Non-2xx answers become [`ApiError::Status`].
    pub async fn send(
        &self,
        method: Method,
        url: &Url,
        authenticated: bool,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, ApiError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self.http.request(method.clone(), url.clone());
            if authenticated {
                request = self.auth.apply(request, &method, url);
            }
            let response = build(request).send().await.map_err(|e| ApiError::Network {
                url: self.base.to_string(),
                reason: crate::http::describe_reqwest(&e),
            })?;
            self.auth.observe(response.headers());
            if response.status().is_success() {
                return Ok(response);
            }
            let error = error_of(response).await;
            if attempt == 1 && error.code() == Some(ProblemCode::DpopNonceRequired) {
                continue;
            }
            return Err(error);
        }
    }

    async fn json<T: DeserializeOwned>(response: Response) -> Result<T, ApiError> {
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ApiError::Protocol(crate::http::describe_reqwest(&e)))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::Protocol(format!("unexpected body: {e}")))
    }

    /// `GET /api/sfmProductVersion`.
    pub async fn product_version(&self) -> Result<ProductVersion, ApiError> {
        let url = self.url(contract::PATH_PRODUCT_VERSION);
        Self::json(
            self.send(Method::GET, &url, false, |r| {
                r.header(reqwest::header::ACCEPT, "application/json")
            })
            .await?,
        )
        .await
    }

    /// `POST /api/v1/key-check`.
    pub async fn key_check(&self) -> Result<KeyCheckResponse, ApiError> {
        let url = self.url(contract::PATH_KEY_CHECK);
        Self::json(self.send(Method::POST, &url, true, |r| r).await?).await
    }

    /// `GET /api/v1/status`.
    pub async fn status(&self) -> Result<MigrationStatus, ApiError> {
        let url = self.url(contract::PATH_STATUS);
        Self::json(self.send(Method::GET, &url, true, |r| r).await?).await
    }

    /// `POST /api/v1/verify`.
    pub async fn verify(&self, manifest: &Manifest) -> Result<VerifyResponse, ApiError> {
        let url = self.url(contract::PATH_VERIFY);
        let body = serde_json::to_vec(manifest).expect("a manifest serialises");
        Self::json(
            self.send(Method::POST, &url, true, |r| {
                r.header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?,
        )
        .await
    }

    /// `POST /api/v1/activate`.
    pub async fn activate(&self) -> Result<ActivateResponse, ApiError> {
        let url = self.url(contract::PATH_ACTIVATE);
        Self::json(self.send(Method::POST, &url, true, |r| r).await?).await
    }

    /// The raw HTTP client, for the tus requests.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// Reads an error response into [`ApiError::Status`].
pub async fn error_of(response: Response) -> ApiError {
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let header_code = response
        .headers()
        .get(contract::HEADER_WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.contains(contract::DPOP_ERROR_USE_NONCE))
        .map(|_| ProblemCode::DpopNonceRequired);
    let bytes = response.bytes().await.unwrap_or_default();
    let mut problem = serde_json::from_slice::<Problem>(&bytes).ok().map(Box::new);
    if problem.is_none()
        && let Some(code) = header_code
    {
        problem = Some(Box::new(Problem::new(code)));
    }
    if problem.is_none() && status == StatusCode::TOO_MANY_REQUESTS {
        problem = Some(Box::new(Problem::new(ProblemCode::Busy).with_status(429)));
    }
    ApiError::Status {
        status: status.as_u16(),
        problem,
        retry_after,
    }
}

/// A header value from a string we built (never fails for our ASCII values).
pub fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}
