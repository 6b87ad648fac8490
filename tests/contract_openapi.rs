//! Proves that the OpenAPI document `docs/openapi.yaml` (served by the API), the human page
//! `docs/wire-contract.md` and the Rust constants and types in `sfm_migration::contract` say the same
//! thing: paths, header names, problem codes, enums, JSON field names and the manifest digest.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_yaml::Value;
use sfm_migration::contract::{
    self, ActivateResponse, Counts, FileType, HEADERS, KeyCheckResponse, Manifest, ManifestFile,
    ManifestMismatches, MigrationPhase, MigrationStatus, OPENAPI_YAML, PATHS, Problem, ProblemCode,
    ProductVersion, RejectedFile, Rejection, VerifyResponse,
};

const WIRE_CONTRACT_MD: &str = include_str!("../docs/wire-contract.md");
const CONTRACT_SOURCES: &[&str] = &[
    include_str!("../src/contract/mod.rs"),
    include_str!("../src/contract/tus.rs"),
    include_str!("../src/contract/key.rs"),
    include_str!("../src/contract/manifest.rs"),
    include_str!("../src/contract/messages.rs"),
    include_str!("../src/contract/problem.rs"),
];

fn document() -> Value {
    serde_yaml::from_str(OPENAPI_YAML).expect("docs/openapi.yaml is valid YAML")
}

fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(value, |v, key| {
        v.get(*key)
            .unwrap_or_else(|| panic!("openapi.yaml lacks {}", path.join(".")))
    })
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .expect("a sequence")
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

fn schema_enum(name: &str) -> BTreeSet<String> {
    strings(at(&document(), &["components", "schemas", name, "enum"]))
        .into_iter()
        .collect()
}

/// `pub const NAME: &str = "value";` lines of the contract's sources whose name starts with `prefix`.
fn declared_constants(prefix: &str) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for source in CONTRACT_SOURCES {
        for line in source.lines() {
            let Some(rest) = line.trim().strip_prefix("pub const ") else {
                continue;
            };
            let Some((name, value)) = rest.split_once(": &str = \"") else {
                continue;
            };
            if name.starts_with(prefix) {
                let value = value.strip_suffix("\";").expect("one-line string constant");
                found.insert(name.to_owned(), value.to_owned());
            }
        }
    }
    found
}

#[test]
fn document_is_openapi_3_1() {
    let doc = document();
    assert!(at(&doc, &["openapi"]).as_str().unwrap().starts_with("3.1."));
    assert_eq!(
        at(&doc, &["info", "version"]).as_str(),
        Some(contract::API_VERSION)
    );
}

#[test]
fn every_path_constant_is_documented_and_every_documented_path_is_a_constant() {
    let documented: BTreeSet<String> = at(&document(), &["paths"])
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let listed: BTreeSet<String> = PATHS.iter().map(|p| (*p).to_owned()).collect();
    assert_eq!(documented, listed, "contract::PATHS vs openapi paths");

    // Every `PATH_*` constant declared in the source is in `PATHS` (so nobody adds a path the test and
    // the document never see).
    let declared: BTreeSet<String> = declared_constants("PATH_").into_values().collect();
    assert_eq!(declared, listed, "PATH_* constants vs contract::PATHS");
}

#[test]
fn operations_are_the_contracts() {
    let doc = document();
    let expected: &[(&str, &[&str])] = &[
        (contract::PATH_FILES, &["options", "post"]),
        (contract::PATH_FILE, &["head", "patch", "delete"]),
        (contract::PATH_PRODUCT_VERSION, &["get"]),
        (contract::PATH_KEY_CHECK, &["post"]),
        (contract::PATH_STATUS, &["get"]),
        (contract::PATH_VERIFY, &["post"]),
        (contract::PATH_ACTIVATE, &["post"]),
        (contract::PATH_OPENAPI, &["get"]),
        (contract::PATH_HEALTHZ, &["get"]),
        (contract::PATH_READYZ, &["get"]),
        (contract::PATH_METRICS, &["get"]),
    ];
    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    for (path, methods) in expected {
        let item = at(&doc, &["paths", path]).as_mapping().unwrap();
        let documented: BTreeSet<&str> = item
            .keys()
            .filter_map(|k| k.as_str())
            .filter(|k| METHODS.contains(k))
            .collect();
        let expected: BTreeSet<&str> = methods.iter().copied().collect();
        assert_eq!(documented, expected, "methods of {path}");
    }
}

/// Header names the document uses: header parameters, keys of every `headers` map (response headers
/// and the header components, which are named after the header), and the security schemes.
fn documented_headers(value: &Value, into: &mut BTreeSet<String>) {
    match value {
        Value::Mapping(map) => {
            if map.get("in").and_then(Value::as_str) == Some("header")
                && let Some(name) = map.get("name").and_then(Value::as_str)
            {
                into.insert(name.to_ascii_lowercase());
            }
            if map.get("type").and_then(Value::as_str) == Some("http") && map.contains_key("scheme")
            {
                into.insert("authorization".to_owned());
            }
            if let Some(Value::Mapping(headers)) = map.get("headers") {
                for key in headers.keys() {
                    into.insert(key.as_str().unwrap().to_ascii_lowercase());
                }
            }
            for child in map.values() {
                documented_headers(child, into);
            }
        }
        Value::Sequence(items) => items.iter().for_each(|v| documented_headers(v, into)),
        _ => {}
    }
}

#[test]
fn every_header_constant_is_documented_and_every_documented_header_is_a_constant() {
    let mut documented = BTreeSet::new();
    documented_headers(&document(), &mut documented);
    let listed: BTreeSet<String> = HEADERS.iter().map(|h| (*h).to_owned()).collect();
    assert_eq!(documented, listed, "contract::HEADERS vs openapi headers");

    let declared: BTreeSet<String> = declared_constants("HEADER_").into_values().collect();
    assert_eq!(declared, listed, "HEADER_* constants vs contract::HEADERS");
}

#[test]
fn every_problem_code_is_in_the_documents_enum_and_back() {
    let documented = schema_enum("ProblemCode");
    let ours: BTreeSet<String> = ProblemCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(documented, ours);
    // And the document's order is the enum's order, so a reader finds them in the same place.
    assert_eq!(
        strings(at(
            &document(),
            &["components", "schemas", "ProblemCode", "enum"]
        )),
        ProblemCode::ALL
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect::<Vec<_>>()
    );
}

#[test]
fn problem_codes_are_in_the_human_page_with_their_status() {
    for code in ProblemCode::ALL {
        let row = WIRE_CONTRACT_MD
            .lines()
            .find(|line| line.starts_with(&format!("| `{}` |", code.as_str())))
            .unwrap_or_else(|| panic!("wire-contract.md has no table row for {code}"));
        assert!(
            row.contains(&format!("| {} ", code.http_status())),
            "wire-contract.md gives {code} another status than {}: {row}",
            code.http_status()
        );
    }
}

#[test]
fn enums_match_the_document() {
    let names = |all: Vec<&str>| all.into_iter().map(str::to_owned).collect::<BTreeSet<_>>();
    assert_eq!(
        schema_enum("FileType"),
        names(FileType::ALL.iter().map(|t| t.as_str()).collect())
    );
    assert_eq!(
        schema_enum("MigrationPhase"),
        names(MigrationPhase::ALL.iter().map(|p| p.as_str()).collect())
    );
    assert_eq!(
        schema_enum("IngestState"),
        names(
            contract::IngestState::ALL
                .iter()
                .map(|s| s.as_str())
                .collect()
        )
    );
}

#[test]
fn tus_constants_match_the_document() {
    let doc = document();
    let header_const = |name: &str| {
        at(&doc, &["components", "headers", name, "schema", "const"])
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header_const("Tus-Resumable"), contract::TUS_VERSION);
    assert_eq!(header_const("Tus-Version"), contract::TUS_VERSION);
    assert_eq!(header_const("Tus-Extension"), contract::TUS_EXTENSIONS);
    assert_eq!(
        header_const("Tus-Checksum-Algorithm"),
        contract::TUS_CHECKSUM_ALGORITHMS
    );
    for algorithm in [
        contract::ChecksumAlgorithm::Sha256,
        contract::ChecksumAlgorithm::Sha1,
    ] {
        assert!(
            contract::TUS_CHECKSUM_ALGORITHMS
                .split(',')
                .any(|a| a == algorithm.as_str())
        );
    }
    assert_eq!(
        at(
            &doc,
            &[
                "components",
                "parameters",
                "Tus-Resumable",
                "schema",
                "const"
            ]
        )
        .as_str(),
        Some(contract::TUS_VERSION)
    );

    // The metadata keys and file types are spelled out where a client reads about Upload-Metadata.
    let description = at(
        &doc,
        &["components", "parameters", "Upload-Metadata", "description"],
    )
    .as_str()
    .unwrap();
    for key in contract::METADATA_KEYS {
        assert!(
            description.contains(&format!("`{key}`")),
            "Upload-Metadata lacks {key}"
        );
    }
    for file_type in FileType::ALL {
        assert!(description.contains(&format!("`{file_type}`")));
    }
    assert!(description.contains(contract::CONTENT_TYPE_OCTET_STREAM));

    // The example metadata decodes with our strict decoder and names the organisation file.
    let example = at(
        &doc,
        &["components", "parameters", "Upload-Metadata", "example"],
    )
    .as_str()
    .unwrap();
    let pairs = contract::decode_upload_metadata(example).unwrap();
    let metadata = contract::CreationMetadata::from_pairs(&pairs).unwrap();
    assert_eq!(metadata.file_type, Some(FileType::ExportData));
    assert_eq!(metadata.name, "ExportData.dat");

    let checksum = at(
        &doc,
        &["components", "parameters", "Upload-Checksum", "example"],
    )
    .as_str()
    .unwrap();
    contract::UploadChecksum::parse(checksum).unwrap();

    // tus PATCH and creation-with-upload bodies use the tus content type.
    for (path, method) in [
        (contract::PATH_FILES, "post"),
        (contract::PATH_FILE, "patch"),
    ] {
        at(
            &doc,
            &[
                "paths",
                path,
                method,
                "requestBody",
                "content",
                contract::CONTENT_TYPE_OFFSET_OCTET_STREAM,
            ],
        );
    }
    // Errors are problem+json.
    at(
        &doc,
        &[
            "components",
            "responses",
            "Busy",
            "content",
            contract::PROBLEM_CONTENT_TYPE,
        ],
    );
}

#[test]
fn migration_key_security_scheme_uses_the_header_constant() {
    let doc = document();
    let scheme = at(&doc, &["components", "securitySchemes", "migrationKey"]);
    assert_eq!(scheme.get("in").and_then(Value::as_str), Some("header"));
    assert_eq!(
        scheme
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some(contract::HEADER_MIGRATION_KEY)
    );
    assert!(
        at(
            &doc,
            &["components", "securitySchemes", "helseIdDpop", "scheme"]
        )
        .as_str()
        .unwrap()
        .eq_ignore_ascii_case(contract::AUTH_SCHEME_DPOP)
    );
    assert!(
        at(
            &doc,
            &["components", "securitySchemes", "helseIdBearer", "scheme"]
        )
        .as_str()
        .unwrap()
        .eq_ignore_ascii_case(contract::AUTH_SCHEME_BEARER)
    );
}

fn time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-06-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// The property names of a schema in the document, and its required ones.
fn schema_properties(name: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let doc = document();
    let schema = at(&doc, &["components", "schemas", name]);
    let properties = at(schema, &["properties"])
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let required = schema
        .get("required")
        .map(strings)
        .unwrap_or_default()
        .into_iter()
        .collect();
    (properties, required)
}

/// A serialised value with every optional field set has exactly the schema's properties; one with
/// every optional field unset still has every required property.
fn assert_shape<T: serde::Serialize>(schema: &str, full: &T, minimal: &T) {
    let keys = |value: &T| -> BTreeSet<String> {
        serde_json::to_value(value)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let (properties, required) = schema_properties(schema);
    assert_eq!(
        keys(full),
        properties,
        "{schema}: serde fields vs schema properties"
    );
    let minimal_keys = keys(minimal);
    assert!(
        required.is_subset(&minimal_keys),
        "{schema}: required {required:?} but a minimal value has only {minimal_keys:?}"
    );
    assert!(
        required.is_subset(&properties),
        "{schema}: required not in properties"
    );
}

#[test]
fn json_bodies_have_the_documented_fields() {
    let product = ProductVersion::new("0.1.0");
    assert_shape("ProductVersion", &product, &product);

    let key_check = KeyCheckResponse {
        key_id: "abcd1234".into(),
        database: "sfm/oslo".into(),
        expires_at: time(),
        phase: MigrationPhase::Staging,
        token_required: false,
        organisation_stored: true,
    };
    assert_shape("KeyCheckResponse", &key_check, &key_check);

    let counts = Counts {
        received: 3,
        stored: 2,
        rejected: 1,
    };
    assert_shape("Counts", &counts, &counts);

    let rejection = Rejection {
        file: "Patients0\\a.pat".into(),
        file_type: FileType::Patient,
        code: ProblemCode::XmlDoctype,
        message: "DOCTYPE at line 1".into(),
        rejected_at: time(),
    };
    assert_shape("Rejection", &rejection, &rejection);

    let full_status = MigrationStatus {
        database: "sfm/oslo".into(),
        phase: MigrationPhase::Validated,
        phase_reason: Some("verified".into()),
        started_at: Some(time()),
        organisation_stored: true,
        users: counts,
        patients: counts,
        reports: Counts::default(),
        expected_patients: Some(2),
        rejections: vec![rejection],
        rejections_truncated: false,
        validated_digest: Some("a".repeat(64)),
        validated_at: Some(time()),
        activation_requested_at: Some(time()),
        stored: Some(contract::StoredFiles {
            files: 3,
            digest: "b".repeat(64),
        }),
    };
    let minimal_status = MigrationStatus {
        phase_reason: None,
        started_at: None,
        expected_patients: None,
        rejections: vec![],
        validated_digest: None,
        validated_at: None,
        activation_requested_at: None,
        stored: None,
        ..full_status.clone()
    };
    assert_shape("MigrationStatus", &full_status, &minimal_status);
    let stored = contract::StoredFiles {
        files: 3,
        digest: "b".repeat(64),
    };
    assert_shape("StoredFiles", &stored, &stored);

    let file = ManifestFile {
        path: "ExportData.dat".into(),
        file_type: FileType::ExportData,
        size: 1,
        sha256: "a".repeat(64),
    };
    assert_shape("ManifestFile", &file, &file);
    let manifest = Manifest::new(vec![file]);
    assert_shape("Manifest", &manifest, &manifest);

    let verify = VerifyResponse {
        validated: true,
        digest: manifest.digest(),
        validated_at: time(),
        files: 1,
        users: 0,
        patients: 0,
        reports: 0,
    };
    assert_shape("VerifyResponse", &verify, &verify);

    let rejected = RejectedFile {
        path: "Patients0\\a.pat".into(),
        code: ProblemCode::XmlMalformed,
    };
    assert_shape("RejectedFile", &rejected, &rejected);
    let mismatches = ManifestMismatches {
        rejected: vec![rejected],
        ..ManifestMismatches::default()
    };
    assert_shape(
        "ManifestMismatches",
        &mismatches,
        &ManifestMismatches::default(),
    );

    let activate = ActivateResponse {
        activation_requested_at: time(),
    };
    assert_shape("ActivateResponse", &activate, &activate);

    let mut full_problem =
        Problem::new(ProblemCode::ManifestMismatch).with_detail("2 files differ");
    full_problem.instance = Some(contract::PATH_VERIFY.into());
    full_problem.mismatches = Some(mismatches);
    assert_shape("Problem", &full_problem, &Problem::new(ProblemCode::Busy));
}

#[test]
fn problem_type_follows_the_documented_pattern() {
    let doc = document();
    let pattern = at(
        &doc,
        &[
            "components",
            "schemas",
            "Problem",
            "properties",
            "type",
            "pattern",
        ],
    )
    .as_str()
    .unwrap();
    let literal_prefix = pattern
        .trim_start_matches('^')
        .split('[')
        .next()
        .unwrap()
        .replace("\\.", ".");
    assert_eq!(literal_prefix, contract::PROBLEM_TYPE_PREFIX);
    for code in ProblemCode::ALL {
        assert!(Problem::new(*code).type_uri.starts_with(&literal_prefix));
    }
}

#[test]
fn the_documented_manifest_example_has_the_documented_digest() {
    let doc = document();
    let request = at(
        &doc,
        &[
            "paths",
            contract::PATH_VERIFY,
            "post",
            "requestBody",
            "content",
            "application/json",
            "examples",
            "canonical",
            "value",
        ],
    );
    let manifest: Manifest = serde_yaml::from_value(request.clone()).unwrap();
    manifest.validate().unwrap();
    assert!(
        manifest.files[1].path.contains('\\'),
        "Index.txt paths keep their backslash"
    );
    let response = at(
        &doc,
        &[
            "paths",
            contract::PATH_VERIFY,
            "post",
            "responses",
            "200",
            "content",
            "application/json",
            "examples",
            "canonical",
            "value",
        ],
    );
    let verify: VerifyResponse = serde_yaml::from_value(response.clone()).unwrap();
    assert_eq!(verify.digest, manifest.digest());
    assert_eq!(verify.files, manifest.files.len() as u64);

    // The human page shows the same example and digest, and the same canonical form.
    assert!(
        WIRE_CONTRACT_MD.contains(&verify.digest),
        "wire-contract.md digest"
    );
    for file in &manifest.files {
        assert!(WIRE_CONTRACT_MD.contains(&file.sha256));
    }
    assert!(WIRE_CONTRACT_MD.contains("path TAB fileType TAB size TAB sha256 LF"));
    let verify_description = at(
        &doc,
        &["paths", contract::PATH_VERIFY, "post", "description"],
    )
    .as_str()
    .unwrap();
    assert!(verify_description.contains("path TAB fileType TAB size TAB sha256 LF"));
}
