use std::sync::Arc;

use super::{Purpose, TokenFacts, choose};
use crate::contract::ProblemCode;
use crate::crd::{
    HelseIdUploads, MigrationDatabase, MigrationDatabaseSpec, MigrationDatabaseStatus, Phase,
};

const ISSUER: &str = "https://helseid-sts.nhn.no";
const ORGANISATION: &str = "974600951";
const OTHER_ORGANISATION: &str = "983544622";

fn database(
    name: &str,
    organisation: &str,
    uploads: Option<HelseIdUploads>,
    phase: Phase,
) -> Arc<MigrationDatabase> {
    let spec: MigrationDatabaseSpec = serde_json::from_value(serde_json::json!({
        "organisation": {
            "name": "Legekontoret",
            "organisationNumber": organisation,
            "helseIdClientId": "sfm-app",
        },
        "dataModelVersion": 4,
        "activation": { "mode": "Manual" },
        "validation": { "helseId": { "issuer": ISSUER, "audience": "nhn:sfm-migration" } },
    }))
    .unwrap();
    let mut db = MigrationDatabase::new(
        name,
        MigrationDatabaseSpec {
            helse_id_uploads: uploads,
            ..spec
        },
    );
    db.status = Some(MigrationDatabaseStatus {
        phase: Some(phase),
        ..Default::default()
    });
    Arc::new(db)
}

fn opted_in(client: Option<&str>, allow_bearer: bool) -> Option<HelseIdUploads> {
    Some(HelseIdUploads {
        client_id: client.map(str::to_owned),
        allow_bearer,
    })
}

fn facts(issuer: &str, organisation: &str, client: &str, dpop: bool) -> TokenFacts {
    TokenFacts {
        issuer: issuer.into(),
        organisation_numbers: vec![organisation.into()],
        client_id: Some(client.into()),
        dpop,
    }
}

fn outcome(
    databases: &[Arc<MigrationDatabase>],
    facts: &TokenFacts,
    purpose: Purpose,
) -> Result<String, ProblemCode> {
    choose(databases, facts, &[ISSUER.to_owned()], purpose)
        .map(|db| db.metadata.name.clone().unwrap())
        .map_err(|e| e.code())
}

#[test]
fn a_request_without_a_key_goes_to_the_one_database_that_accepts_its_token() {
    let dpop = facts(ISSUER, ORGANISATION, "epj-export", true);
    let bearer = facts(ISSUER, ORGANISATION, "epj-export", false);
    let mine = database("mine", ORGANISATION, opted_in(None, false), Phase::Staging);
    let other_org = database(
        "other",
        OTHER_ORGANISATION,
        opted_in(None, true),
        Phase::Staging,
    );
    let not_opted_in = database("plain", ORGANISATION, None, Phase::Staging);
    let pinned_client = database(
        "pinned",
        ORGANISATION,
        opted_in(Some("epj-export"), true),
        Phase::Migrating,
    );
    let other_client = database(
        "elsewhere",
        ORGANISATION,
        opted_in(Some("another-client"), true),
        Phase::Migrating,
    );
    let operational = database(
        "done",
        ORGANISATION,
        opted_in(None, true),
        Phase::Operational,
    );
    let failed = database("failed", ORGANISATION, opted_in(None, true), Phase::Failed);
    use Purpose::{Read, Write};

    type Row<'a> = (
        Vec<&'a Arc<MigrationDatabase>>,
        &'a TokenFacts,
        Purpose,
        Result<&'a str, ProblemCode>,
    );
    let table: Vec<Row> = vec![
        // The one that opted in, among databases of other organisations or without the opt-in.
        (
            vec![&mine, &other_org, &not_opted_in],
            &dpop,
            Write,
            Ok("mine"),
        ),
        // Bearer only where the database allows it.
        (
            vec![&mine],
            &bearer,
            Write,
            Err(ProblemCode::UploaderNoDatabase),
        ),
        (vec![&mine, &pinned_client], &bearer, Write, Ok("pinned")),
        // A named client must be the token's.
        (
            vec![&other_client],
            &dpop,
            Write,
            Err(ProblemCode::UploaderNoDatabase),
        ),
        (
            vec![&other_client, &pinned_client],
            &dpop,
            Write,
            Ok("pinned"),
        ),
        // Two that would take it: refused, never guessed.
        (
            vec![&mine, &pinned_client],
            &dpop,
            Write,
            Err(ProblemCode::UploaderAmbiguous),
        ),
        // Not opted in, or another organisation: nothing.
        (
            vec![&not_opted_in, &other_org],
            &dpop,
            Write,
            Err(ProblemCode::UploaderNoDatabase),
        ),
        // Phases: an operational or failed database takes no upload; operational answers a read.
        (
            vec![&operational, &failed],
            &dpop,
            Write,
            Err(ProblemCode::UploaderNoDatabase),
        ),
        (vec![&operational, &failed], &dpop, Read, Ok("done")),
        (vec![&mine, &operational], &dpop, Write, Ok("mine")),
    ];
    for (index, (databases, facts, purpose, expected)) in table.into_iter().enumerate() {
        let databases: Vec<Arc<MigrationDatabase>> = databases.into_iter().cloned().collect();
        assert_eq!(
            outcome(&databases, facts, purpose),
            expected.map(str::to_owned),
            "row {index}"
        );
    }
}

#[test]
fn an_issuer_the_api_does_not_trust_is_refused_whatever_the_database_says() {
    let mine = database("mine", ORGANISATION, opted_in(None, true), Phase::Staging);
    let foreign = facts("https://evil.example", ORGANISATION, "epj-export", true);
    // The database trusts the issuer it names, not this one; and the API trusts neither.
    assert_eq!(
        outcome(std::slice::from_ref(&mine), &foreign, Purpose::Write),
        Err(ProblemCode::TokenInvalid)
    );
    // An issuer the database names but the API does not trust.
    let trusted_by_database_only = choose(
        &[mine],
        &facts(ISSUER, ORGANISATION, "epj-export", true),
        &["https://other-issuer.example".to_owned()],
        Purpose::Write,
    );
    assert_eq!(
        trusted_by_database_only.unwrap_err().code(),
        ProblemCode::TokenInvalid
    );
}

#[test]
fn claims_are_read_from_the_token_and_a_missing_token_is_key_missing() {
    use axum::http::{HeaderMap, HeaderValue};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    let payload = serde_json::json!({
        "iss": ISSUER,
        "client_id": "epj-export",
        "helseid://claims/client/claims/orgnr_parent": ORGANISATION,
    });
    let token = format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"PS256"}"#),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("DPoP {token}")).unwrap(),
    );
    assert_eq!(
        super::token_facts(&headers).unwrap(),
        facts(ISSUER, ORGANISATION, "epj-export", true)
    );
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer not-a-jwt"),
    );
    assert_eq!(
        super::token_facts(&headers).unwrap_err().code(),
        ProblemCode::TokenInvalid
    );
    assert_eq!(
        super::token_facts(&HeaderMap::new()).unwrap_err().code(),
        ProblemCode::KeyMissing
    );
}
