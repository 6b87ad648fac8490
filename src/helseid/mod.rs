//! HelseID, NHN's OpenID Connect issuer: what both sides of the migration need of it.
//!
//! - [`verify`]: the migration API checks an access token (Bearer or DPoP) when a database asks for one:
//!   signature by the issuer's JWKS with an `alg` allow-list, issuer, audience, expiry, scope, the
//!   organisation number claim, and for DPoP the proof's method, URL, `ath`, `jti` replay and `cnf.jkt`.
//! - [`client`]: `sfm-migrate login` obtains a token by client credentials with a signed client assertion
//!   (`private_key_jwt`), with a DPoP proof when asked.
//! - [`issuer`]: a local issuer that behaves like HelseID (discovery, JWKS, token endpoint with client
//!   assertions and DPoP nonces, HelseID's claim names) for tests and the demo; never the network,
//!   and not in a production build (feature `dev-issuer`).
//!
//! A leaf: it knows neither the migration API nor the client that use it (its errors are its own,
//! [`verify::TokenError`], which the API turns into answers). It must never log a token or a key.

pub mod client;
/// The development issuer: for the demo and the tests only, never in a production build.
#[cfg(feature = "dev-issuer")]
pub mod issuer;
pub mod verify;

/// HelseID's claim carrying the organisation number of the legal entity (the parent organisation).
pub const CLAIM_ORGNR_PARENT: &str = "helseid://claims/client/claims/orgnr_parent";
/// HelseID's claim carrying the organisation number of a sub-unit (child organisation), when present.
pub const CLAIM_ORGNR_CHILD: &str = "helseid://claims/client/claims/orgnr_child";
/// The claim naming the client the token was issued to.
pub const CLAIM_CLIENT_ID: &str = "client_id";
/// The JWT `typ` of a DPoP proof (RFC 9449).
pub const DPOP_PROOF_TYP: &str = "dpop+jwt";
/// The JWT `typ` of a client assertion (RFC 7523, as HelseID asks for it).
pub const CLIENT_ASSERTION_TYP: &str = "client-authentication+jwt";
/// The `client_assertion_type` form value for `private_key_jwt`.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
