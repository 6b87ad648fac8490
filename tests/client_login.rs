//! `sfm-migrate login`'s protocol, checked from the server's side by a small in-test token endpoint
//! (a narrow unit test; the project's local HelseID-like issuer is the other side in the demo): the
//! discovery document is read, the client assertion is a valid RFC 7523 JWT signed by the client's
//! key, and with DPoP the proof is an RFC 9449 proof for the token endpoint, retried once with the
//! server's nonce after `use_dpop_nonce`, and the token is stored bound to that key.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sfm_migration::format::envelope::generate_demo_key_pair;
use sfm_migration::helseid::client::{ClientCredentials, DpopKey, SigningKey, client_credentials};
use sfm_migration::helseid::{CLIENT_ASSERTION_TYP, CLIENT_ASSERTION_TYPE, DPOP_PROOF_TYP};

#[derive(Default)]
struct Issuer {
    issuer: Mutex<String>,
    public_pem: String,
    nonce_challenges: Mutex<u32>,
    seen_jti: Mutex<Vec<String>>,
    jkt: Mutex<Option<String>>,
}

fn claims(jwt: &str, index: usize) -> serde_json::Value {
    let part = jwt.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

async fn discovery(State(state): State<Arc<Issuer>>) -> Response {
    let issuer = state.issuer.lock().unwrap().clone();
    axum::Json(serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/connect/token"),
        "jwks_uri": format!("{issuer}/.well-known/jwks"),
    }))
    .into_response()
}

async fn token(State(state): State<Arc<Issuer>>, headers: HeaderMap, body: String) -> Response {
    let issuer = state.issuer.lock().unwrap().clone();
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(headers["content-type"], "application/x-www-form-urlencoded");
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_assertion_type"], CLIENT_ASSERTION_TYPE);
    assert_eq!(form["scope"], "nhn:sfm/migration");
    // The assertion: signature by the client's registered key, typ, iss = sub = client_id, aud =
    // the issuer, short-lived, a jti never seen before.
    let assertion = &form["client_assertion"];
    let header = claims(assertion, 0);
    assert_eq!(header["typ"], CLIENT_ASSERTION_TYP);
    assert_eq!(header["kid"], "client-key-1");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[issuer.as_str()]);
    validation.set_issuer(&["flow-sfm"]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let verified = jsonwebtoken::decode::<serde_json::Value>(
        assertion,
        &DecodingKey::from_rsa_pem(state.public_pem.as_bytes()).unwrap(),
        &validation,
    )
    .expect("the client assertion verifies with the client's public key");
    assert_eq!(verified.claims["sub"], "flow-sfm");
    assert_eq!(form["client_id"], "flow-sfm");
    let jti = verified.claims["jti"].as_str().unwrap().to_owned();
    {
        let mut seen = state.seen_jti.lock().unwrap();
        assert!(!seen.contains(&jti), "an assertion is never replayed");
        seen.push(jti);
    }

    let Some(proof) = headers.get("dpop").and_then(|v| v.to_str().ok()) else {
        return axum::Json(serde_json::json!({
            "access_token": "plain-token", "token_type": "Bearer", "expires_in": 600,
            "scope": "nhn:sfm/migration"
        }))
        .into_response();
    };
    let header = claims(proof, 0);
    assert_eq!(header["typ"], DPOP_PROOF_TYP);
    assert_eq!(header["alg"], "ES256");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(header["jwk"].clone()).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let proof_claims = jsonwebtoken::decode::<serde_json::Value>(
        proof,
        &DecodingKey::from_jwk(&jwk).unwrap(),
        &validation,
    )
    .expect("the DPoP proof verifies with its own jwk")
    .claims;
    assert_eq!(proof_claims["htm"], "POST");
    assert_eq!(proof_claims["htu"], format!("{issuer}/connect/token"));
    assert!(
        proof_claims.get("ath").is_none(),
        "no ath at the token endpoint"
    );
    if proof_claims.get("nonce").and_then(|n| n.as_str()) != Some("nonce-42") {
        *state.nonce_challenges.lock().unwrap() += 1;
        return (
            StatusCode::BAD_REQUEST,
            [("dpop-nonce", "nonce-42")],
            axum::Json(serde_json::json!({"error": "use_dpop_nonce"})),
        )
            .into_response();
    }
    *state.jkt.lock().unwrap() = Some(
        jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
            .unwrap(),
    );
    axum::Json(serde_json::json!({
        "access_token": "bound-token", "token_type": "DPoP", "expires_in": 600
    }))
    .into_response()
}

#[tokio::test]
async fn login_speaks_private_key_jwt_and_dpop_with_a_nonce() {
    sfm_migration::tls::install_crypto_provider();
    let client_key = generate_demo_key_pair(2048, "flow-sfm").unwrap();
    // The public key as PEM, from the private key (openssl would do the same).
    let public_pem = {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, &client_key.private_key_pem).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-in", key.to_str().unwrap(), "-pubout"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let state = Arc::new(Issuer {
        public_pem,
        ..Issuer::default()
    });
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/connect/token", post(token))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    *state.issuer.lock().unwrap() = issuer.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();
    let credentials = |dpop| ClientCredentials {
        issuer: issuer.clone(),
        client_id: "flow-sfm".into(),
        key: SigningKey::from_pem(
            client_key.private_key_pem.as_bytes(),
            Some("client-key-1".into()),
        )
        .unwrap(),
        scope: "nhn:sfm/migration".into(),
        dpop,
    };

    let plain = client_credentials(&http, &credentials(false))
        .await
        .unwrap();
    assert_eq!(plain.token_type, "Bearer");
    assert!(plain.dpop_key.is_none());

    let bound = client_credentials(&http, &credentials(true)).await.unwrap();
    assert_eq!(bound.token_type, "DPoP");
    assert_eq!(bound.access_token, "bound-token");
    assert_eq!(
        *state.nonce_challenges.lock().unwrap(),
        1,
        "one nonce retry"
    );
    let key = bound.dpop_key.as_ref().unwrap();
    assert_eq!(
        state.jkt.lock().unwrap().clone().unwrap(),
        key.thumbprint(),
        "the token is bound to the key the client keeps"
    );
    // The stored key makes resource proofs with ath for that token.
    let again = DpopKey::from_pem(key.pem()).unwrap();
    let proof = again
        .proof("GET", "http://api/api/v1/status", Some("bound-token"), None)
        .unwrap();
    assert_eq!(
        claims(&proof, 1)["ath"],
        sfm_migration::helseid::client::access_token_hash("bound-token")
    );
    // Debug output never holds the token.
    assert!(!format!("{bound:?}").contains("bound-token"));
}

/// `sfm-migrate login` (the binary) against the project's own local HelseID-like issuer
/// (`helseid::issuer`), and the token and proofs it then sends checked by the API's own verifier
/// (`helseid::verify`): the two sides of HelseID's protocol meet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sfm_migrate_login_meets_the_local_issuer_and_the_api_verifier() {
    use jsonwebtoken::EncodingKey;
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use sfm_migration::helseid::issuer::{Issuer, IssuerConfig, RegisteredClient, router};
    use sfm_migration::helseid::verify::{
        Expectations, ProofContext, ReplayCache, verify_access_token, verify_dpop_proof,
    };

    sfm_migration::tls::install_crypto_provider();
    const SCOPE: &str = "nhn:sfm-migration/upload";
    const AUDIENCE: &str = "nhn:sfm-migration";
    const ORGNR: &str = "974600951";
    let client_key = generate_demo_key_pair(2048, "flow-sfm").unwrap();
    let mut jwk = Jwk::from_encoding_key(
        &EncodingKey::from_rsa_pem(client_key.private_key_pem.as_bytes()).unwrap(),
        Algorithm::RS256,
    )
    .unwrap();
    jwk.common.key_id = Some("client-key-1".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer_url = format!("http://{}", listener.local_addr().unwrap());
    let issuer = Issuer::new(IssuerConfig {
        issuer_url: issuer_url.clone(),
        audience: AUDIENCE.into(),
        clients: vec![RegisteredClient {
            client_id: "flow-sfm".into(),
            jwks: JwkSet { keys: vec![jwk] },
            organisation_number: ORGNR.into(),
            child_organisation_number: None,
            scopes: vec![SCOPE.into()],
        }],
        token_lifetime: std::time::Duration::from_secs(600),
    })
    .unwrap();
    let app = router(issuer.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("client-key.pem");
    std::fs::write(&key_file, &client_key.private_key_pem).unwrap();
    let config = dir.path().join("config");
    let login = |dpop: bool| {
        let mut args = vec![
            "login".to_owned(),
            "--issuer".into(),
            issuer_url.clone(),
            "--client-id".into(),
            "flow-sfm".into(),
            "--key-file".into(),
            key_file.display().to_string(),
            "--kid".into(),
            "client-key-1".into(),
            "--scope".into(),
            SCOPE.into(),
        ];
        if dpop {
            args.push("--dpop".into());
        }
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_sfm-migrate"))
                .args(&args)
                .env("SFM_MIGRATE_CONFIG_DIR", &config)
                .output()
                .unwrap()
        })
    };
    let expect = Expectations {
        issuer: &issuer_url,
        audience: AUDIENCE,
        required_scope: Some(SCOPE),
        organisation_number: ORGNR,
    };

    // Bearer.
    let out = login(false).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config.join("token.json")).unwrap()).unwrap();
    assert_eq!(stored["token_type"], "Bearer");
    let token = stored["access_token"].as_str().unwrap();
    verify_access_token(token, &issuer.jwks(), &expect).expect("the API accepts the token");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(token),
        "the token is never printed"
    );

    // DPoP: the token is bound to the key stored beside it, and the client's proofs verify.
    let out = login(true).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config.join("token.json")).unwrap()).unwrap();
    assert_eq!(stored["token_type"], "DPoP");
    let token = stored["access_token"].as_str().unwrap();
    let claims = verify_access_token(token, &issuer.jwks(), &expect).unwrap();
    let key = DpopKey::from_pem(stored["dpop_key_pem"].as_str().unwrap()).unwrap();
    let jkt = claims.cnf.and_then(|c| c.jkt).expect("a DPoP-bound token");
    assert_eq!(jkt, key.thumbprint());
    let url = "https://api.test/files";
    let proof = key.proof("POST", url, Some(token), None).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    verify_dpop_proof(
        &proof,
        &ProofContext {
            method: "POST",
            url,
            access_token: Some(token),
            jkt: Some(&jkt),
            now,
        },
        &ReplayCache::default(),
    )
    .expect("the API accepts the client's DPoP proof");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(config.join("token.json"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}
