//! The client side of HelseID for `sfm-migrate login`: an access token by the client credentials
//! grant with a signed client assertion (`private_key_jwt`, RFC 7523 as HelseID profiles it), bound
//! to a DPoP key when asked (RFC 9449), and the DPoP proofs the client then sends with every request
//! to the migration API.
//!
//! - Discovery: `GET <issuer>/.well-known/openid-configuration` gives `token_endpoint`.
//! - Client assertion: a JWT with `typ` [`CLIENT_ASSERTION_TYP`], `iss` = `sub` = the client id,
//!   `aud` = the issuer, `iat`/`nbf`/`exp` (60 s) and a unique `jti`, signed RS256 (RSA key) or ES256
//!   (P-256 key) with the key registered for the client; `kid` when given.
//! - DPoP proof: a JWT with `typ` [`DPOP_PROOF_TYP`], the public key as `jwk` in the header, and
//!   `htm`, `htu` (without query and fragment), `iat`, `jti`, plus `ath` (base64url SHA-256 of the
//!   access token) for resource requests and `nonce` when the server gave one. A `use_dpop_nonce`
//!   answer is retried once with the nonce from `DPoP-Nonce`.
//!
//! Nothing here logs or prints a token, an assertion or a key.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use url::Url;

use super::{CLIENT_ASSERTION_TYP, CLIENT_ASSERTION_TYPE, DPOP_PROOF_TYP};

/// Why a login failed; messages never hold a token, an assertion or key material.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the signing key is not an RSA or P-256 private key in PEM")]
    BadSigningKey,
    #[error("the DPoP key is not a P-256 private key in PEM")]
    BadDpopKey,
    #[error("cannot sign a JWT: {0}")]
    Sign(String),
    #[error("cannot reach HelseID at {url}: {reason}")]
    Network { url: String, reason: String },
    #[error("HelseID's discovery document at {url} is unusable: {reason}")]
    Discovery { url: String, reason: String },
    #[error("HelseID refused the token request: {error}{description}")]
    Refused { error: String, description: String },
    #[error("HelseID answered the token request with HTTP {status} and no explanation")]
    Status { status: u16 },
    #[error("HelseID's token response is unusable: {0}")]
    Response(String),
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// A DPoP key pair (ECDSA P-256, ES256).
pub struct DpopKey {
    pem: String,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopKey")
            .field("thumbprint", &self.thumbprint())
            .finish()
    }
}

#[derive(Serialize)]
struct DpopClaims<'a> {
    htm: &'a str,
    htu: String,
    iat: u64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
}

impl DpopKey {
    /// A fresh P-256 key.
    pub fn generate() -> Result<Self, LoginError> {
        let document =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| LoginError::Sign("cannot generate a P-256 key".into()))?;
        Self::from_pem(&pem_encode("PRIVATE KEY", document.as_ref()))
    }

    /// A key from PKCS#8 PEM.
    pub fn from_pem(pem: &str) -> Result<Self, LoginError> {
        let encoding =
            EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|_| LoginError::BadDpopKey)?;
        let jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256)
            .map_err(|_| LoginError::BadDpopKey)?;
        Ok(DpopKey {
            pem: pem.to_owned(),
            encoding,
            jwk,
        })
    }

    /// The private key as PKCS#8 PEM, to store beside the token it is bound to.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The RFC 7638 SHA-256 thumbprint of the public key: the token's `cnf.jkt`.
    pub fn thumbprint(&self) -> String {
        self.jwk
            .thumbprint(ThumbprintHash::SHA256)
            .unwrap_or_default()
    }

    /// The public key as the header's `jwk` (without `alg`, which RFC 9449 does not need).
    pub fn public_jwk(&self) -> Jwk {
        let mut jwk = self.jwk.clone();
        jwk.common.key_algorithm = None;
        jwk
    }

    /// A DPoP proof for `method` on `url`; `access_token` adds `ath`, `nonce` the server's nonce.
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, LoginError> {
        let mut htu = Url::parse(url).map_err(|_| LoginError::Sign("bad URL".into()))?;
        htu.set_query(None);
        htu.set_fragment(None);
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(DPOP_PROOF_TYP.to_owned());
        header.jwk = Some(self.public_jwk());
        let claims = DpopClaims {
            htm: method,
            htu: htu.to_string(),
            iat: now(),
            jti: uuid::Uuid::new_v4().to_string(),
            ath: access_token.map(access_token_hash),
            nonce,
        };
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| LoginError::Sign(e.to_string()))
    }
}

/// `ath`: base64url (no padding) of the SHA-256 of the access token.
pub fn access_token_hash(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        access_token.as_bytes(),
    ))
}

/// The key a client signs its assertions with.
pub struct SigningKey {
    encoding: EncodingKey,
    algorithm: Algorithm,
    kid: Option<String>,
}

impl SigningKey {
    /// An RSA (RS256) or P-256 (ES256) private key in PEM; `kid` names it in the header.
    pub fn from_pem(pem: &[u8], kid: Option<String>) -> Result<Self, LoginError> {
        if let Ok(encoding) = EncodingKey::from_rsa_pem(pem) {
            return Ok(SigningKey {
                encoding,
                algorithm: Algorithm::RS256,
                kid,
            });
        }
        if let Ok(encoding) = EncodingKey::from_ec_pem(pem) {
            return Ok(SigningKey {
                encoding,
                algorithm: Algorithm::ES256,
                kid,
            });
        }
        Err(LoginError::BadSigningKey)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
}

/// A client assertion (RFC 7523) for `client_id` addressed to `audience` (HelseID's issuer).
pub fn client_assertion(
    key: &SigningKey,
    client_id: &str,
    audience: &str,
) -> Result<String, LoginError> {
    let mut header = Header::new(key.algorithm);
    header.typ = Some(CLIENT_ASSERTION_TYP.to_owned());
    header.kid = key.kid.clone();
    let iat = now();
    let claims = AssertionClaims {
        iss: client_id,
        sub: client_id,
        aud: audience,
        iat,
        nbf: iat,
        exp: iat + 60,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    jsonwebtoken::encode(&header, &claims, &key.encoding)
        .map_err(|e| LoginError::Sign(e.to_string()))
}

/// What a login needs.
pub struct ClientCredentials {
    /// HelseID's issuer, e.g. `https://helseid-sts.nhn.no`.
    pub issuer: String,
    pub client_id: String,
    pub key: SigningKey,
    /// Space-separated scopes.
    pub scope: String,
    /// Ask for a DPoP-bound token.
    pub dpop: bool,
}

/// A token from HelseID.
pub struct AccessToken {
    pub access_token: String,
    /// `Bearer` or `DPoP`.
    pub token_type: String,
    pub expires_in: Option<u64>,
    pub scope: Option<String>,
    /// The key the token is bound to, for DPoP.
    pub dpop_key: Option<DpopKey>,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: Option<String>,
    token_endpoint: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    expires_in: Option<u64>,
    scope: Option<String>,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
    error_description: Option<String>,
}

fn network(url: &str, error: &reqwest::Error) -> LoginError {
    LoginError::Network {
        url: url.to_owned(),
        reason: crate::http::describe_reqwest(error),
    }
}

/// What a client needs of HelseID's discovery document.
pub struct Discovered {
    /// The issuer as HelseID names itself (`issuer`): the `aud` of a client assertion, which HelseID
    /// compares exactly (a trailing slash on `--issuer` must not change it).
    pub issuer: String,
    pub token_endpoint: String,
}

/// HelseID's token endpoint and issuer name from its discovery document.
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Discovered, LoginError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let response = http.get(&url).send().await.map_err(|e| network(&url, &e))?;
    if !response.status().is_success() {
        return Err(LoginError::Discovery {
            url,
            reason: format!("HTTP {}", response.status().as_u16()),
        });
    }
    let document: Discovery = response.json().await.map_err(|e| LoginError::Discovery {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    if let Some(found) = &document.issuer
        && found.trim_end_matches('/') != issuer.trim_end_matches('/')
    {
        return Err(LoginError::Discovery {
            url,
            reason: "it names another issuer".into(),
        });
    }
    Ok(Discovered {
        issuer: document
            .issuer
            .unwrap_or_else(|| issuer.trim_end_matches('/').to_owned()),
        token_endpoint: document.token_endpoint,
    })
}

/// The client credentials grant with a client assertion, DPoP-bound when `config.dpop`.
pub async fn client_credentials(
    http: &reqwest::Client,
    config: &ClientCredentials,
) -> Result<AccessToken, LoginError> {
    let discovered = discover(http, &config.issuer).await?;
    let token_endpoint = discovered.token_endpoint;
    let dpop_key = if config.dpop {
        Some(DpopKey::generate()?)
    } else {
        None
    };
    let mut nonce: Option<String> = None;
    for attempt in 0..2 {
        // A fresh assertion each time: its jti must not be replayed.
        let assertion = client_assertion(&config.key, &config.client_id, &discovered.issuer)?;
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", config.client_id.as_str()),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", assertion.as_str()),
            ("scope", config.scope.as_str()),
        ];
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut request = http
            .post(&token_endpoint)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        if let Some(key) = &dpop_key {
            request = request.header(
                crate::contract::HEADER_DPOP,
                key.proof("POST", &token_endpoint, None, nonce.as_deref())?,
            );
        }
        let response = request
            .send()
            .await
            .map_err(|e| network(&token_endpoint, &e))?;
        let status = response.status();
        let server_nonce = response
            .headers()
            .get(crate::contract::HEADER_DPOP_NONCE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| network(&token_endpoint, &e))?;
        if status.is_success() {
            let token: TokenResponse =
                serde_json::from_slice(&bytes).map_err(|e| LoginError::Response(e.to_string()))?;
            if config.dpop && !token.token_type.eq_ignore_ascii_case("dpop") {
                return Err(LoginError::Response(
                    "a DPoP token was asked for, but HelseID issued another type".into(),
                ));
            }
            return Ok(AccessToken {
                access_token: token.access_token,
                token_type: token.token_type,
                expires_in: token.expires_in,
                scope: token.scope,
                dpop_key,
            });
        }
        match serde_json::from_slice::<TokenError>(&bytes) {
            Ok(error) if error.error == crate::contract::DPOP_ERROR_USE_NONCE && attempt == 0 => {
                match server_nonce {
                    Some(value) => nonce = Some(value),
                    None => {
                        return Err(LoginError::Response(
                            "HelseID asked for a DPoP nonce without sending one".into(),
                        ));
                    }
                }
            }
            Ok(error) => {
                return Err(LoginError::Refused {
                    error: error.error,
                    description: error
                        .error_description
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default(),
                });
            }
            Err(_) => {
                return Err(LoginError::Status {
                    status: status.as_u16(),
                });
            }
        }
    }
    Err(LoginError::Response(
        "HelseID kept asking for a new DPoP nonce".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpop_proof_has_the_rfc_9449_shape() {
        let key = DpopKey::generate().unwrap();
        let proof = key
            .proof(
                "PATCH",
                "https://api.example/files/abc?x=1#f",
                Some("token"),
                Some("n1"),
            )
            .unwrap();
        let parts: Vec<&str> = proof.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["jwk"]["kty"], "EC");
        assert!(header["jwk"].get("d").is_none(), "no private part");
        assert_eq!(claims["htm"], "PATCH");
        assert_eq!(claims["htu"], "https://api.example/files/abc");
        assert_eq!(claims["ath"], access_token_hash("token"));
        assert_eq!(claims["nonce"], "n1");
        assert!(claims["jti"].as_str().unwrap().len() >= 32);
        // The proof verifies with the public key in its header.
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&key.public_jwk()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        jsonwebtoken::decode::<serde_json::Value>(&proof, &decoding, &validation).unwrap();
        // The key survives its PEM.
        let again = DpopKey::from_pem(key.pem()).unwrap();
        assert_eq!(again.thumbprint(), key.thumbprint());
    }

    #[test]
    fn client_assertion_names_the_client_and_the_issuer() {
        let pair = crate::format::envelope::generate_demo_key_pair(2048, "client").unwrap();
        let key = SigningKey::from_pem(pair.private_key_pem.as_bytes(), Some("k1".into())).unwrap();
        let jwt = client_assertion(&key, "my-client", "https://helseid.example").unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(header["typ"], CLIENT_ASSERTION_TYP);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], "k1");
        assert_eq!(claims["iss"], "my-client");
        assert_eq!(claims["sub"], "my-client");
        assert_eq!(claims["aud"], "https://helseid.example");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            60
        );
        assert!(SigningKey::from_pem(b"not a key", None).is_err());
    }
}
