//! The one error type of the API's handlers: an RFC 9457 problem with the contract's code, plus the
//! headers some codes need (`Retry-After`, `WWW-Authenticate`, `DPoP-Nonce`). Details never hold
//! personal data, keys or tokens; unexpected errors are logged by kind and answered as `internal`.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::contract::{self, ContractError, Problem, ProblemCode};

#[derive(Debug)]
pub struct ApiError {
    /// Boxed: handlers return `Result<_, ApiError>` everywhere and the problem is large.
    pub problem: Box<Problem>,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(code: ProblemCode) -> Self {
        let mut error = ApiError {
            problem: Box::new(Problem::new(code)),
            headers: Vec::new(),
        };
        let challenge = match code {
            ProblemCode::KeyMissing
            | ProblemCode::KeyMalformed
            | ProblemCode::KeyUnknown
            | ProblemCode::KeyWrong => Some(contract::AUTH_SCHEME_MIGRATION_KEY.to_owned()),
            // RFC 6750 section 3 and RFC 9449 section 7.1: no error code when no token came.
            ProblemCode::TokenRequired => Some(token_challenge(None)),
            ProblemCode::TokenInvalid | ProblemCode::UploaderNoDatabase => {
                Some(token_challenge(Some("invalid_token")))
            }
            ProblemCode::TokenScopeMissing | ProblemCode::TokenOrganisationMismatch => {
                Some(token_challenge(Some("insufficient_scope")))
            }
            ProblemCode::DpopNonceRequired => Some(format!(
                "{} error=\"{}\"",
                contract::AUTH_SCHEME_DPOP,
                contract::DPOP_ERROR_USE_NONCE
            )),
            _ => None,
        };
        if let Some(challenge) = challenge {
            error
                .headers
                .push((contract::HEADER_WWW_AUTHENTICATE, challenge));
        }
        error
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.problem.detail = Some(detail.into());
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.headers
            .push((contract::HEADER_RETRY_AFTER, seconds.to_string()));
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn code(&self) -> ProblemCode {
        self.problem.code
    }

    /// An unexpected failure: logged with its kind (never a value), answered without internals.
    pub fn internal(context: &'static str, error: impl std::fmt::Display) -> Self {
        tracing::error!(%context, error = %error, "internal error");
        ApiError::new(ProblemCode::Internal).detail(format!("the server failed to {context}"))
    }
}

impl From<ProblemCode> for ApiError {
    fn from(code: ProblemCode) -> Self {
        ApiError::new(code)
    }
}

impl From<&ContractError> for ApiError {
    fn from(error: &ContractError) -> Self {
        ApiError::new(error.problem_code()).detail(error.to_string())
    }
}

impl From<ContractError> for ApiError {
    fn from(error: ContractError) -> Self {
        ApiError::from(&error)
    }
}

/// Database errors: a full pool is backpressure (503 `busy`), the rest is internal.
pub fn database(context: &'static str, error: sqlx::Error) -> ApiError {
    match error {
        sqlx::Error::PoolTimedOut => ApiError::new(ProblemCode::Busy)
            .detail("every database connection of this API replica is in use")
            .retry_after(2),
        // The pool was closed under the request: its database gave its connections to another
        // (see `Directory::pool`) or left staging. Asked again, the request finds out which.
        sqlx::Error::PoolClosed => ApiError::new(ProblemCode::Busy)
            .detail("the database's connections were closed meanwhile")
            .retry_after(1),
        sqlx::Error::Database(e)
            if e.code().as_deref() == Some(crate::postgres::provision::VALIDATED_SQLSTATE) =>
        {
            ApiError::new(ProblemCode::MigrationValidated)
        }
        other => ApiError::internal(context, other),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Refused keys and tokens, by code only (the detail and the key stay out of the log): what an
        // operator troubleshooting a data controller's "the key does not work" looks for.
        if matches!(self.problem.status, 401 | 403) {
            tracing::info!(
                code = self.problem.code.as_str(),
                status = self.problem.status,
                "request refused"
            );
        }
        let status =
            StatusCode::from_u16(self.problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static(contract::PROBLEM_CONTENT_TYPE),
        );
        headers.insert(
            HeaderName::from_static(contract::HEADER_TUS_RESUMABLE),
            HeaderValue::from_static(contract::TUS_VERSION),
        );
        for (name, value) in &self.headers {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.append(HeaderName::from_static(name), value);
            }
        }
        let body = serde_json::to_vec(&self.problem).unwrap_or_default();
        (status, headers, body).into_response()
    }
}

/// The `WWW-Authenticate` challenges for a HelseID token: Bearer and DPoP, with the RFC 6750 error
/// code when a token came and was refused.
fn token_challenge(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!(", error=\"{e}\""))
        .unwrap_or_default();
    format!(
        "{} realm=\"sfm\"{error}, {} realm=\"sfm\"{error}, algs=\"{}\"",
        contract::AUTH_SCHEME_BEARER,
        contract::AUTH_SCHEME_DPOP,
        crate::helseid::verify::DPOP_ALGORITHMS
    )
}

/// A refused HelseID token, as the migration API answers it. A refused DPoP proof says so in its
/// challenge (RFC 9449 `invalid_dpop_proof`).
impl From<crate::helseid::verify::TokenError> for ApiError {
    fn from(error: crate::helseid::verify::TokenError) -> Self {
        let mut answer = ApiError::new(error.code()).detail(error.to_string());
        if matches!(error, crate::helseid::verify::TokenError::InvalidProof(_)) {
            answer
                .headers
                .retain(|(name, _)| *name != contract::HEADER_WWW_AUTHENTICATE);
            answer.headers.push((
                contract::HEADER_WWW_AUTHENTICATE,
                format!(
                    "{} realm=\"sfm\", error=\"invalid_dpop_proof\", algs=\"{}\"",
                    contract::AUTH_SCHEME_DPOP,
                    crate::helseid::verify::DPOP_ALGORITHMS
                ),
            ));
        }
        answer
    }
}
