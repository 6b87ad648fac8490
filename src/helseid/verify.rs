//! Checks a HelseID access token for the migration API (filled in below).

use crate::api::ApiError;
use crate::api::auth::RequestFacts;
use crate::contract::ProblemCode;
use crate::crd::TokenPolicy;

/// Verifies tokens; holds the JWKS cache and the DPoP replay cache.
pub struct Verifier {}

impl Verifier {
    pub fn new() -> Self {
        Verifier {}
    }

    /// Checks the request's token against the database's policy; returns the HelseID client id.
    pub async fn check_request(
        &self,
        _policy: &TokenPolicy,
        _organisation_number: &str,
        _request: &RequestFacts<'_>,
    ) -> Result<String, ApiError> {
        Err(ApiError::new(ProblemCode::TokenRequired))
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}
