//! HelseID token checks of the migration API against the local issuer: each refusal the issue lists
//! (wrong issuer, audience, expiry, `alg=none`, HMAC signed with the public key, organisation
//! mismatch, DPoP replay, wrong `ath`, wrong `cnf.jkt`) fails with its own reason, and the whole
//! client-credentials flow (client assertion, DPoP nonce) over HTTP yields a token the API accepts.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use axum::http::{HeaderMap, HeaderValue, Method};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use sfm_migration::api::auth::RequestFacts;
use sfm_migration::contract::ProblemCode;
use sfm_migration::crd::TokenPolicy;
use sfm_migration::helseid::issuer::{Issuer, IssuerConfig, RegisteredClient};
use sfm_migration::helseid::verify::{
    Expectations, ProofContext, ReplayCache, TokenError, Verifier, access_token_hash, thumbprint,
    verify_access_token, verify_dpop_proof,
};
use sfm_migration::helseid::{CLIENT_ASSERTION_TYPE, DPOP_PROOF_TYP};

const ISSUER: &str = "https://helseid.test";
const AUDIENCE: &str = "nhn:sfm-migration";
const ORGNR: &str = "100100614";
const API_URL: &str = "https://api.test/files";

/// An ES256 key pair: signing key and public JWK.
fn es256() -> (EncodingKey, Jwk) {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EncodingKey::from_ec_der(pkcs8.as_ref());
    let jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    (key, jwk)
}

fn client(jwk: &Jwk) -> RegisteredClient {
    RegisteredClient {
        client_id: "sample-sfm".into(),
        jwks: JwkSet {
            keys: vec![jwk.clone()],
        },
        organisation_number: ORGNR.into(),
        child_organisation_number: None,
        scopes: vec!["nhn:sfm-migration/upload".into()],
    }
}

fn issuer(url: &str, client_jwk: &Jwk) -> Arc<Issuer> {
    Issuer::new(IssuerConfig {
        issuer_url: url.into(),
        audience: AUDIENCE.into(),
        clients: vec![client(client_jwk)],
        token_lifetime: Duration::from_secs(600),
    })
    .unwrap()
}

fn expect() -> Expectations<'static> {
    Expectations {
        issuer: ISSUER,
        audience: AUDIENCE,
        required_scope: Some("nhn:sfm-migration/upload"),
        organisation_number: ORGNR,
    }
}

fn proof(
    key: &EncodingKey,
    jwk: &Jwk,
    method: &str,
    url: &str,
    token: Option<&str>,
    nonce: Option<&str>,
) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.typ = Some(DPOP_PROOF_TYP.into());
    header.jwk = Some(jwk.clone());
    let mut claims = json!({
        "jti": uuid::Uuid::new_v4().to_string(),
        "htm": method,
        "htu": url,
        "iat": chrono::Utc::now().timestamp(),
    });
    if let Some(token) = token {
        claims["ath"] = access_token_hash(token).into();
    }
    if let Some(nonce) = nonce {
        claims["nonce"] = nonce.into();
    }
    encode(&header, &claims, key).unwrap()
}

fn encoded(pairs: &[(&str, String)]) -> String {
    let mut serializer = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        serializer.append_pair(key, value);
    }
    serializer.finish()
}

fn context<'a>(token: &'a str, jkt: &'a str) -> ProofContext<'a> {
    ProofContext {
        method: "PATCH",
        url: API_URL,
        access_token: Some(token),
        jkt: Some(jkt),
        now: chrono::Utc::now().timestamp(),
    }
}

#[test]
fn a_token_from_the_issuer_verifies() {
    let (_, client_jwk) = es256();
    let issuer = issuer(ISSUER, &client_jwk);
    let token = issuer.sign(&issuer.claims_for(
        &client(&client_jwk),
        &["nhn:sfm-migration/upload".into()],
        None,
    ));
    let claims = verify_access_token(&token, &issuer.jwks(), &expect()).unwrap();
    assert_eq!(claims.client_id.as_deref(), Some("sample-sfm"));
}

fn claims_with(change: impl FnOnce(&mut serde_json::Value)) -> (Arc<Issuer>, String) {
    let (_, client_jwk) = es256();
    let issuer = issuer(ISSUER, &client_jwk);
    let mut claims = issuer.claims_for(
        &client(&client_jwk),
        &["nhn:sfm-migration/upload".into()],
        None,
    );
    change(&mut claims);
    let token = issuer.sign(&claims);
    (issuer, token)
}

#[test]
fn wrong_issuer_audience_expiry_scope_and_organisation_are_refused() {
    type Change = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, Change, TokenError)> = vec![
        (
            "issuer",
            Box::new(|c| c["iss"] = "https://evil.test".into()),
            TokenError::Invalid("the issuer is not the expected one"),
        ),
        (
            "audience",
            Box::new(|c| c["aud"] = "someone-else".into()),
            TokenError::Invalid("the audience is not the expected one"),
        ),
        (
            "expiry",
            Box::new(|c| c["exp"] = (chrono::Utc::now().timestamp() - 3600).into()),
            TokenError::Invalid("it has expired"),
        ),
        (
            "scope",
            Box::new(|c| c["scope"] = json!(["other"])),
            TokenError::Scope,
        ),
        (
            "organisation",
            Box::new(|c| c["helseid://claims/client/claims/orgnr_parent"] = "974760673".into()),
            TokenError::Organisation,
        ),
    ];
    for (what, change, expected) in cases {
        let (issuer, token) = claims_with(change);
        let error = verify_access_token(&token, &issuer.jwks(), &expect()).unwrap_err();
        assert_eq!(error, expected, "{what}");
    }
    let (_, token) =
        claims_with(|c| c["helseid://claims/client/claims/orgnr_parent"] = "974760673".into());
    let (issuer, _) = claims_with(|_| {});
    // Another issuer's key does not verify this token at all.
    assert!(matches!(
        verify_access_token(&token, &issuer.jwks(), &expect()),
        Err(TokenError::Invalid(_))
    ));
    assert_eq!(
        TokenError::Organisation.code(),
        ProblemCode::TokenOrganisationMismatch
    );
}

#[test]
fn alg_none_and_hmac_signed_with_the_public_key_are_refused() {
    let (issuer, token) = claims_with(|_| {});
    let payload = token.split('.').nth(1).unwrap();
    let none_header =
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"sfm-dev-issuer-1"}"#);
    let unsigned = format!("{none_header}.{payload}.");
    assert!(matches!(
        verify_access_token(&unsigned, &issuer.jwks(), &expect()),
        Err(TokenError::Invalid(_))
    ));

    // The classic key confusion: HS256 with the issuer's public key as the shared secret.
    let public = serde_json::to_vec(&issuer.jwks().keys[0]).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("sfm-dev-issuer-1".into());
    let hmac = encode(&header, &claims, &EncodingKey::from_secret(&public)).unwrap();
    let error = verify_access_token(&hmac, &issuer.jwks(), &expect()).unwrap_err();
    assert_eq!(
        error,
        TokenError::Invalid("the alg is not an allowed asymmetric algorithm")
    );
}

#[test]
fn dpop_replay_wrong_ath_and_wrong_jkt_are_refused() {
    let (dpop_key, dpop_jwk) = es256();
    let jkt = thumbprint(&dpop_jwk).unwrap();
    let token = "an-access-token";
    let replay = ReplayCache::default();

    let good = proof(&dpop_key, &dpop_jwk, "PATCH", API_URL, Some(token), None);
    verify_dpop_proof(&good, &context(token, &jkt), &replay).unwrap();
    assert_eq!(
        verify_dpop_proof(&good, &context(token, &jkt), &replay).unwrap_err(),
        TokenError::InvalidProof("it was used before (jti replay)")
    );

    let other_token = proof(
        &dpop_key,
        &dpop_jwk,
        "PATCH",
        API_URL,
        Some("another-token"),
        None,
    );
    assert_eq!(
        verify_dpop_proof(&other_token, &context(token, &jkt), &replay).unwrap_err(),
        TokenError::InvalidProof("ath is not the hash of the access token")
    );

    let (thief_key, thief_jwk) = es256();
    let stolen = proof(&thief_key, &thief_jwk, "PATCH", API_URL, Some(token), None);
    assert_eq!(
        verify_dpop_proof(&stolen, &context(token, &jkt), &replay).unwrap_err(),
        TokenError::InvalidProof("its key is not the one the token is bound to (cnf.jkt)")
    );

    let wrong_method = proof(&dpop_key, &dpop_jwk, "POST", API_URL, Some(token), None);
    assert_eq!(
        verify_dpop_proof(&wrong_method, &context(token, &jkt), &replay).unwrap_err(),
        TokenError::InvalidProof("htm is not this request's method")
    );
    let wrong_url = proof(
        &dpop_key,
        &dpop_jwk,
        "PATCH",
        "https://elsewhere.test/files",
        Some(token),
        None,
    );
    assert_eq!(
        verify_dpop_proof(&wrong_url, &context(token, &jkt), &replay).unwrap_err(),
        TokenError::InvalidProof("htu is not this request's URL")
    );
}

/// The client-credentials flow over HTTP against the issuer, then the API's verifier (discovery,
/// JWKS fetch, DPoP proof for the API request) accepts the token; a Bearer use of the DPoP-bound
/// token is refused.
#[test]
fn client_credentials_with_dpop_nonce_yield_a_token_the_api_accepts() {
    sfm_migration::tls::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (client_key, client_jwk) = es256();
        let issuer = issuer(&url, &client_jwk);
        let token_endpoint = issuer.token_endpoint();
        tokio::spawn(async move {
            axum::serve(listener, sfm_migration::helseid::issuer::router(issuer)).await.unwrap();
        });
        let http = reqwest::Client::new();
        let (dpop_key, dpop_jwk) = es256();
        let assertion = |key: &EncodingKey| {
            let now = chrono::Utc::now().timestamp();
            let mut header = Header::new(Algorithm::ES256);
            header.typ = Some(sfm_migration::helseid::CLIENT_ASSERTION_TYP.into());
            encode(&header, &json!({"iss": "sample-sfm", "sub": "sample-sfm", "aud": token_endpoint, "iat": now, "exp": now + 60, "jti": uuid::Uuid::new_v4().to_string()}), key).unwrap()
        };
        let form = |assertion: String| {
            vec![
                ("grant_type", "client_credentials".to_owned()),
                ("client_id", "sample-sfm".to_owned()),
                ("client_assertion_type", CLIENT_ASSERTION_TYPE.to_owned()),
                ("client_assertion", assertion),
                ("scope", "nhn:sfm-migration/upload".to_owned()),
            ]
        };
        // A wrong client key is refused.
        let (wrong_key, _) = es256();
        let refused = http.post(&token_endpoint).header("content-type", "application/x-www-form-urlencoded").body(encoded(&form(assertion(&wrong_key)))).send().await.unwrap();
        assert_eq!(refused.status(), 401);
        // First DPoP proof without a nonce: use_dpop_nonce with a nonce.
        let first = http
            .post(&token_endpoint)
            .header("dpop", proof(&dpop_key, &dpop_jwk, "POST", &token_endpoint, None, None))
            .header("content-type", "application/x-www-form-urlencoded").body(encoded(&form(assertion(&client_key))))
            .send()
            .await
            .unwrap();
        assert_eq!(first.status(), 400);
        let nonce = first.headers()["dpop-nonce"].to_str().unwrap().to_owned();
        assert!(first.text().await.unwrap().contains("use_dpop_nonce"));
        let second = http
            .post(&token_endpoint)
            .header("dpop", proof(&dpop_key, &dpop_jwk, "POST", &token_endpoint, None, Some(&nonce)))
            .header("content-type", "application/x-www-form-urlencoded").body(encoded(&form(assertion(&client_key))))
            .send()
            .await
            .unwrap();
        assert_eq!(second.status(), 200);
        let body: serde_json::Value = second.json().await.unwrap();
        assert_eq!(body["token_type"], "DPoP");
        let access_token = body["access_token"].as_str().unwrap().to_owned();

        let verifier = Verifier::new();
        let policy = TokenPolicy {
            issuer: url.clone(),
            audience: AUDIENCE.into(),
            required_scope: Some("nhn:sfm-migration/upload".into()),
            require_dpop: false,
        };
        let method = Method::PATCH;
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_str(&format!("DPoP {access_token}")).unwrap());
        headers.insert("dpop", HeaderValue::from_str(&proof(&dpop_key, &dpop_jwk, "PATCH", API_URL, Some(&access_token), None)).unwrap());
        let facts = RequestFacts { method: &method, url: API_URL.into(), headers: &headers };
        assert_eq!(verifier.check_request(&policy, ORGNR, &facts).await.unwrap(), "sample-sfm");
        // The same proof again is a replay.
        let error = verifier.check_request(&policy, ORGNR, &facts).await.unwrap_err();
        assert_eq!(error.code(), ProblemCode::TokenInvalid);
        // Another organisation's database refuses the token.
        headers.insert("dpop", HeaderValue::from_str(&proof(&dpop_key, &dpop_jwk, "PATCH", API_URL, Some(&access_token), None)).unwrap());
        let facts = RequestFacts { method: &method, url: API_URL.into(), headers: &headers };
        assert_eq!(verifier.check_request(&policy, "974760673", &facts).await.unwrap_err().code(), ProblemCode::TokenOrganisationMismatch);
        // As a Bearer token it is refused: it is bound to the DPoP key.
        let mut bearer = HeaderMap::new();
        bearer.insert("authorization", HeaderValue::from_str(&format!("Bearer {access_token}")).unwrap());
        let facts = RequestFacts { method: &method, url: API_URL.into(), headers: &bearer };
        assert_eq!(verifier.check_request(&policy, ORGNR, &facts).await.unwrap_err().code(), ProblemCode::TokenInvalid);
        // No token at all.
        let empty = HeaderMap::new();
        let facts = RequestFacts { method: &method, url: API_URL.into(), headers: &empty };
        assert_eq!(verifier.check_request(&policy, ORGNR, &facts).await.unwrap_err().code(), ProblemCode::TokenRequired);
    });
}

#[test]
fn a_token_not_valid_yet_is_refused() {
    let (issuer, token) = claims_with(|claims| {
        claims["nbf"] = (chrono::Utc::now().timestamp() + 3600).into();
    });
    assert_eq!(
        verify_access_token(&token, &issuer.jwks(), &expect()).unwrap_err(),
        TokenError::Invalid("it is not valid yet")
    );
}

/// The issuer's keys outlive an outage of the issuer (a valid token is still accepted once the
/// cache has expired), a flood of tokens with unknown `kid`s fetches the keys at most once in the
/// rate limit's time, and a database that requires DPoP refuses a Bearer token.
#[test]
fn keys_outlive_an_issuer_outage_unknown_kids_are_rate_limited_and_dpop_can_be_required() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    sfm_migration::tls::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (_, client_jwk) = es256();
        let issuer = issuer(&url, &client_jwk);
        let key_fetches = Arc::new(AtomicUsize::new(0));
        let counter = key_fetches.clone();
        let app = sfm_migration::helseid::issuer::router(issuer.clone()).layer(
            tower::util::MapRequestLayer::new(
                move |request: axum::http::Request<axum::body::Body>| {
                    if request.uri().path() == sfm_migration::helseid::issuer::JWKS_PATH {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    request
                },
            ),
        );
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let policy = TokenPolicy {
            issuer: url.clone(),
            audience: AUDIENCE.into(),
            required_scope: Some("nhn:sfm-migration/upload".into()),
            require_dpop: false,
        };
        let token = issuer.sign(&issuer.claims_for(
            &client(&client_jwk),
            &["nhn:sfm-migration/upload".into()],
            None,
        ));
        let method = Method::PATCH;
        let bearer = |token: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
            headers
        };
        let verifier = Verifier::with_timings(Duration::from_millis(300), Duration::from_secs(30));
        // Another replica's verifier, whose rate limit lets it try the issuer again soon.
        let eager = Verifier::with_timings(Duration::from_millis(300), Duration::from_millis(100));
        let first = headers_of(&token);
        assert_eq!(
            eager
                .check_request(&policy, ORGNR, &facts_of(&method, &first))
                .await
                .unwrap(),
            "sample-sfm"
        );
        key_fetches.store(0, Ordering::SeqCst);
        let headers = bearer(&token);
        let facts = RequestFacts {
            method: &method,
            url: API_URL.into(),
            headers: &headers,
        };
        assert_eq!(
            verifier
                .check_request(&policy, ORGNR, &facts)
                .await
                .unwrap(),
            "sample-sfm"
        );
        assert_eq!(key_fetches.load(Ordering::SeqCst), 1);

        // Tokens with kids the issuer never published: refused, and no fetch per token.
        let (stranger, _) = es256();
        for _ in 0..20 {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(uuid::Uuid::new_v4().to_string());
            let forged = encode(
                &header,
                &issuer.claims_for(
                    &client(&client_jwk),
                    &["nhn:sfm-migration/upload".into()],
                    None,
                ),
                &stranger,
            )
            .unwrap();
            let headers = bearer(&forged);
            let facts = RequestFacts {
                method: &method,
                url: API_URL.into(),
                headers: &headers,
            };
            assert_eq!(
                verifier
                    .check_request(&policy, ORGNR, &facts)
                    .await
                    .unwrap_err()
                    .code(),
                ProblemCode::TokenInvalid
            );
        }
        assert_eq!(
            key_fetches.load(Ordering::SeqCst),
            1,
            "unknown kids fetched the keys again"
        );

        // The issuer goes away and the cache expires: the fetch fails, the last good keys verify a
        // token never seen before (one seen before is not checked again until its `exp`).
        server.abort();
        let _ = server.await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let fresh = issuer.sign(&issuer.claims_for(
            &client(&client_jwk),
            &["nhn:sfm-migration/upload".into()],
            None,
        ));
        assert_ne!(fresh, token);
        assert_eq!(
            eager
                .check_request(&policy, ORGNR, &facts_of(&method, &headers_of(&fresh)))
                .await
                .unwrap(),
            "sample-sfm"
        );
        assert_eq!(
            verifier
                .check_request(&policy, ORGNR, &facts_of(&method, &headers_of(&token)))
                .await
                .unwrap(),
            "sample-sfm"
        );
        // An issuer never reached has no keys to fall back on.
        let unreachable = TokenPolicy {
            issuer: "http://127.0.0.1:9".into(),
            ..policy.clone()
        };
        assert_eq!(
            verifier
                .check_request(&unreachable, ORGNR, &facts_of(&method, &headers_of(&token)))
                .await
                .unwrap_err(),
            TokenError::Jwks
        );

        // A database that requires DPoP refuses the same token as Bearer.
        let strict = TokenPolicy {
            require_dpop: true,
            ..policy.clone()
        };
        assert_eq!(
            verifier
                .check_request(&strict, ORGNR, &facts_of(&method, &headers_of(&token)))
                .await
                .unwrap_err(),
            TokenError::DpopRequired
        );
    });
}

fn headers_of(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers
}

fn facts_of<'a>(method: &'a Method, headers: &'a HeaderMap) -> RequestFacts<'a> {
    RequestFacts {
        method,
        url: API_URL.into(),
        headers,
    }
}
