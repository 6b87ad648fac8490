//! HelseID: verifying access tokens (issuer, audience, expiry, DPoP) in the API, obtaining them in the client,
//! and a local issuer that behaves like HelseID for tests and the demo. (Built by the migration API issue.)
