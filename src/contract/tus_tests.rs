//! Unit tests of [`super`].

use super::*;
use proptest::prelude::*;

fn decoded(header: &str) -> Vec<(String, String)> {
    decode_upload_metadata(header)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
        .collect()
}

#[test]
fn metadata_as_nhn_uploader_sends_it() {
    let header = encode_upload_metadata(&[
        (
            METADATA_NAME,
            "Patients0\\0e7bfd89-ff43-4c5a-a9e2-1af46ae33672.pat",
        ),
        (METADATA_CONTENT_TYPE, CONTENT_TYPE_OCTET_STREAM),
        (METADATA_FILE_TYPE, "Patient"),
    ]);
    assert_eq!(
        header,
        "name UGF0aWVudHMwXDBlN2JmZDg5LWZmNDMtNGM1YS1hOWUyLTFhZjQ2YWUzMzY3Mi5wYXQ=,\
         contentType YXBwbGljYXRpb24vb2N0ZXQtc3RyZWFt,FileType UGF0aWVudA=="
    );
    let pairs = decode_upload_metadata(&header).unwrap();
    let metadata = CreationMetadata::from_pairs(&pairs).unwrap();
    assert_eq!(metadata.file_type, Some(FileType::Patient));
    assert_eq!(
        metadata.name,
        "Patients0\\0e7bfd89-ff43-4c5a-a9e2-1af46ae33672.pat"
    );
    assert!(metadata.session.is_none());
}

#[test]
fn metadata_tolerates_spaces_around_pairs_and_empty_values() {
    assert_eq!(
        decoded(" a YQ== , b,c "),
        vec![
            ("a".into(), "a".into()),
            ("b".into(), String::new()),
            ("c".into(), String::new())
        ]
    );
    assert_eq!(decoded(""), vec![]);
    assert_eq!(encode_upload_metadata(&[("b", "")]), "b");
}

#[test]
fn metadata_rejects_malformed_headers() {
    let cases: &[(&str, &str)] = &[
        ("a YQ==,,b YQ==", "empty pair"),
        ("a YQ==,", "trailing comma"),
        ("a YQ", "unpadded base64"),
        ("a YQ=!", "not base64"),
        ("a YQ== YQ==", "two values"),
        ("a YQ==,a Yg==", "duplicate key"),
        ("ä YQ==", "non-ASCII key"),
        ("a\tb YQ==", "control character in key"),
        ("a_-_b YQ==,a_-_b", "duplicate key without value"),
        ("a YR==", "non-canonical base64 trailing bits"),
    ];
    for (header, why) in cases {
        assert!(
            decode_upload_metadata(header).is_err(),
            "{why}: {header:?} must be rejected"
        );
    }
    let long_key = "k".repeat(MAX_UPLOAD_METADATA_KEY_BYTES + 1);
    assert!(matches!(
        decode_upload_metadata(&long_key),
        Err(ContractError::MetadataInvalidKey { .. })
    ));
}

#[test]
fn metadata_is_bounded() {
    let many = (0..=MAX_UPLOAD_METADATA_PAIRS)
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(",");
    assert!(matches!(
        decode_upload_metadata(&many),
        Err(ContractError::MetadataTooManyPairs { .. })
    ));
    let exactly = (0..MAX_UPLOAD_METADATA_PAIRS)
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        decode_upload_metadata(&exactly).unwrap().len(),
        MAX_UPLOAD_METADATA_PAIRS
    );
    let huge = format!(
        "a {}",
        STANDARD.encode(vec![0u8; MAX_UPLOAD_METADATA_BYTES])
    );
    assert!(matches!(
        decode_upload_metadata(&huge),
        Err(ContractError::MetadataTooLong { .. })
    ));
}

#[test]
fn creation_metadata_requires_name_and_a_known_file_type() {
    let pairs = |header: &str| decode_upload_metadata(header).unwrap();
    let missing_type = pairs(&encode_upload_metadata(&[(
        METADATA_NAME,
        "ExportData.dat",
    )]));
    assert_eq!(
        CreationMetadata::from_pairs(&missing_type),
        Err(ContractError::MetadataMissing {
            key: METADATA_FILE_TYPE
        })
    );
    let unknown_type = pairs(&encode_upload_metadata(&[
        (METADATA_NAME, "ExportData.dat"),
        (METADATA_FILE_TYPE, "Organisation"),
    ]));
    let error = CreationMetadata::from_pairs(&unknown_type).unwrap_err();
    assert_eq!(error, ContractError::FileTypeUnknown);
    assert_eq!(error.problem_code().http_status(), 400);
    let wrong_content_type = pairs(&encode_upload_metadata(&[
        (METADATA_NAME, "ExportData.dat"),
        (METADATA_FILE_TYPE, "ExportData"),
        (METADATA_CONTENT_TYPE, "text/xml"),
    ]));
    assert!(CreationMetadata::from_pairs(&wrong_content_type).is_err());
    let control = pairs(&encode_upload_metadata(&[
        (METADATA_NAME, "a\nb.pat"),
        (METADATA_FILE_TYPE, "Patient"),
    ]));
    assert!(CreationMetadata::from_pairs(&control).is_err());
}

/// NHN's uploader's metadata, byte for byte as `../shared/sfm-format/nhn-uploader.md` has it: four
/// keys in this order, its `FileType` enum names, the file name alone, a session GUID.
#[test]
fn nhn_uploader_metadata_is_read_with_its_file_types_and_session_guid() {
    let session = "3f2b8c4e-5d6a-4b7c-9e8f-0a1b2c3d4e5f";
    let cases = [
        (
            "ExportData.dat",
            "OrganizationFile",
            Some(FileType::ExportData),
        ),
        (
            "0e7bfd89-ff43-4c5a-a9e2-1af46ae33672.pat",
            "PatientFile",
            Some(FileType::Patient),
        ),
        ("rapport1.rpt", "ReportFile", Some(FileType::Report)),
        ("rapport2.dat", "ReportFile", Some(FileType::Report)),
        ("stray.pat", "Unknown", None),
    ];
    for (name, file_type, expected) in cases {
        let header = encode_upload_metadata(&[
            (METADATA_NAME, name),
            (METADATA_CONTENT_TYPE, CONTENT_TYPE_OCTET_STREAM),
            (METADATA_FILE_TYPE, file_type),
            (METADATA_SESSION_ID, session),
        ]);
        assert!(!header.contains(", "), "comma-separated without spaces");
        let metadata =
            CreationMetadata::from_pairs(&decode_upload_metadata(&header).unwrap()).unwrap();
        assert_eq!(metadata.file_type, expected, "{name}");
        assert_eq!(metadata.name, name);
        assert_eq!(metadata.session.unwrap().to_string(), session);
    }
}

/// `SessionId` is a GUID, never a key: a key there is refused (and so never stored).
#[test]
fn a_session_id_that_is_no_guid_is_refused() {
    let key = crate::contract::MigrationKeyToken::generate()
        .unwrap()
        .expose();
    for bad in [key.as_str(), "not-a-guid", ""] {
        let header = encode_upload_metadata(&[
            (METADATA_NAME, "ExportData.dat"),
            (METADATA_FILE_TYPE, "OrganizationFile"),
            (METADATA_SESSION_ID, bad),
        ]);
        let error =
            CreationMetadata::from_pairs(&decode_upload_metadata(&header).unwrap()).unwrap_err();
        assert_eq!(error.problem_code().as_str(), "metadata-invalid", "{bad:?}");
    }
    // A name that does not fit its type is refused as well.
    let header = encode_upload_metadata(&[
        (METADATA_NAME, "x.pat"),
        (METADATA_FILE_TYPE, "OrganizationFile"),
    ]);
    assert!(CreationMetadata::from_pairs(&decode_upload_metadata(&header).unwrap()).is_err());
}

#[test]
fn file_types_parse_ignoring_case_and_follow_extensions() {
    for t in FileType::ALL {
        assert_eq!(t.as_str().parse::<FileType>().unwrap(), t);
        assert_eq!(t.as_str().to_uppercase().parse::<FileType>().unwrap(), t);
        assert_eq!(t.nhn_name().parse::<FileType>().unwrap(), t);
    }
    assert!("Unknown".parse::<FileType>().is_err());
    assert!("Patients".parse::<FileType>().is_err());
    assert!("".parse::<FileType>().is_err());
    assert_eq!(
        FileType::from_path("ExportData.dat"),
        Some(FileType::ExportData)
    );
    assert_eq!(
        FileType::from_path("Patients3\\x.PAT"),
        Some(FileType::Patient)
    );
    assert_eq!(
        FileType::from_path("Reports\\r.rpt"),
        Some(FileType::Report)
    );
    assert_eq!(FileType::from_path("Index.txt"), None);
    assert_eq!(
        serde_json::to_string(&FileType::Patient).unwrap(),
        "\"Patient\""
    );
    assert!(serde_json::from_str::<FileType>("\"Bogus\"").is_err());
}

#[test]
fn checksum_round_trip_and_rejections() {
    let sum = UploadChecksum::of(ChecksumAlgorithm::Sha256, b"abc");
    assert_eq!(
        sum.to_header(),
        "sha256 ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
    );
    assert_eq!(UploadChecksum::parse(&sum.to_header()).unwrap(), sum);
    let sha1 = UploadChecksum::parse("sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0=").unwrap();
    assert!(
        sha1.matches(
            UploadChecksum::of(ChecksumAlgorithm::Sha1, b"abc")
                .digest
                .as_slice()
        )
    );
    assert_eq!(
        UploadChecksum::parse("md5 kAFQmDzST7DWlj99KOF/cg=="),
        Err(ContractError::ChecksumAlgorithmUnsupported)
    );
    assert_eq!(
        UploadChecksum::parse("sha256 qZk+NkcGgWq6PiVxeFDCbJzQ2J0="),
        Err(ContractError::ChecksumMalformed),
        "a sha1-length digest under sha256"
    );
    assert_eq!(
        UploadChecksum::parse("sha256"),
        Err(ContractError::ChecksumMalformed)
    );
}

#[test]
fn upload_id_round_trip_and_strictness() {
    let database = Uuid::new_v4();
    let id = UploadId::new_random(database);
    let text = id.to_string();
    assert_eq!(text.len(), 65);
    assert_eq!(text.parse::<UploadId>().unwrap(), id);
    assert_eq!(text.parse::<UploadId>().unwrap().database, database);
    for bad in [
        "",
        "abc",
        &text.to_uppercase(),
        &text.replace('.', "-"),
        &format!("{text}x"),
        &format!("{}.{}", database.hyphenated(), id.upload.simple()),
        "../../etc/passwd",
    ] {
        assert!(bad.parse::<UploadId>().is_err(), "{bad:?}");
    }
}

#[test]
fn http_dates_round_trip() {
    let at = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
    assert_eq!(at.to_rfc3339(), "1994-11-06T08:49:37+00:00");
    assert_eq!(format_http_date(at), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert!(parse_http_date("1994-11-06T08:49:37Z").is_err());
    assert!(parse_http_date("Sun, 06 Nov 1994 08:49:37 +0100").is_err());
}

#[test]
fn retry_after_reads_seconds_only() {
    assert_eq!(parse_retry_after("5"), Some(5));
    assert_eq!(parse_retry_after(" 120 "), Some(120));
    assert_eq!(parse_retry_after("-1"), None);
    assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), None);
    assert_eq!(parse_retry_after(""), None);
}

proptest! {
    #[test]
    fn metadata_round_trips(
        pairs in proptest::collection::btree_map(
            "[!-+\\--~]{1,20}", any::<String>(), 0..MAX_UPLOAD_METADATA_PAIRS)
    ) {
        let borrowed: Vec<(&str, &str)> =
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let header = encode_upload_metadata(&borrowed);
        prop_assume!(header.len() <= MAX_UPLOAD_METADATA_BYTES);
        let decoded = decode_upload_metadata(&header).unwrap();
        let expected: Vec<(String, Vec<u8>)> = pairs
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn metadata_decoder_never_panics(header in "\\PC{0,200}") {
        let _ = decode_upload_metadata(&header);
    }
}
