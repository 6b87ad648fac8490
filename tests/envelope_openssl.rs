//! Interoperability of NHN's encryption envelope with the `openssl` command line (DESIGN section 5):
//! a file built by openssl alone decrypts with our code, a file we encrypt decrypts with openssl
//! alone, and damaged or foreign files fail with the error an operator can act on.

#[path = "common/samples.rs"]
mod samples;

use std::path::{Path, PathBuf};
use std::process::Command;

use sfm_migration::format::envelope::{
    self, DEFAULT_EXTENSION, DecryptionKeys, EnvelopeError, RecipientCertificate,
    generate_demo_key_pair,
};

const OPENSSL: &str = "/usr/bin/openssl";
const OAEP_SHA512: [&str; 6] = [
    "-pkeyopt",
    "rsa_padding_mode:oaep",
    "-pkeyopt",
    "rsa_oaep_md:sha512",
    "-pkeyopt",
    "rsa_mgf1_md:sha512",
];

/// NHN's sample organisation file content: what a real `ExportData.dat` wraps.
fn sample_zip() -> Vec<u8> {
    samples::organisation_zip()
}

/// Runs openssl in `dir` and returns its stdout; fails the test with stderr on error.
fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let output = Command::new(OPENSSL)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// An RSA key and a self-signed "SFM migrering" certificate made by openssl alone.
fn openssl_key_and_certificate(dir: &Path, bits: u32) -> (PathBuf, PathBuf) {
    let bits_option = format!("rsa_keygen_bits:{bits}");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            &bits_option,
            "-out",
            "key.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "key.pem",
            "-subj",
            "/CN=SFM migrering",
            "-days",
            "2",
            "-out",
            "cert.pem",
        ],
    );
    (dir.join("key.pem"), dir.join("cert.pem"))
}

/// The envelope layout written out by hand, independently of the code under test.
fn assemble(wrapped_key: &[u8], iv: &[u8], extension_base64: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for len in [wrapped_key.len(), iv.len(), extension_base64.len()] {
        out.extend_from_slice(&(len as u32).to_le_bytes());
    }
    out.extend_from_slice(wrapped_key);
    out.extend_from_slice(iv);
    out.extend_from_slice(extension_base64);
    out.extend_from_slice(ciphertext);
    out
}

fn u32_at(data: &[u8], at: usize) -> usize {
    u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize
}

fn keys_from(pem: &str) -> DecryptionKeys {
    DecryptionKeys::from_pkcs8_pem(&[pem.as_bytes()]).expect("load the private key")
}

#[test]
fn a_file_made_by_openssl_alone_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (key_pem, cert_pem) = openssl_key_and_certificate(dir, 2048);
    openssl(
        dir,
        &["pkey", "-in", "key.pem", "-pubout", "-out", "pub.pem"],
    );

    let plain = sample_zip();
    std::fs::write(dir.join("plain.zip"), &plain).unwrap();
    let key_hex = String::from_utf8(openssl(dir, &["rand", "-hex", "32"])).unwrap();
    let iv_hex = String::from_utf8(openssl(dir, &["rand", "-hex", "16"])).unwrap();
    let (key_hex, iv_hex) = (key_hex.trim(), iv_hex.trim());
    openssl(
        dir,
        &[
            "enc",
            "-aes-256-cbc",
            "-K",
            key_hex,
            "-iv",
            iv_hex,
            "-in",
            "plain.zip",
            "-out",
            "content.bin",
        ],
    );
    let content_key = hex::decode(key_hex).unwrap();
    std::fs::write(dir.join("content_key.bin"), &content_key).unwrap();
    let mut wrap = vec![
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        "pub.pem",
        "-in",
        "content_key.bin",
        "-out",
        "wrapped.bin",
    ];
    wrap.extend(OAEP_SHA512);
    openssl(dir, &wrap);

    let wrapped = std::fs::read(dir.join("wrapped.bin")).unwrap();
    assert_eq!(wrapped.len(), 256);
    let ciphertext = std::fs::read(dir.join("content.bin")).unwrap();
    let file = assemble(
        &wrapped,
        &hex::decode(iv_hex).unwrap(),
        b"emlw",
        &ciphertext,
    );

    let keys = DecryptionKeys::from_pem_files(&[key_pem]).unwrap();
    let header = envelope::parse_header(&file).unwrap();
    assert_eq!(
        (
            header.encrypted_key_len,
            header.iv_len,
            header.extension_len
        ),
        (256, 16, 4)
    );
    assert_eq!(header.extension, DEFAULT_EXTENSION);
    assert_eq!(header.content_offset, 12 + 256 + 16 + 4);

    let (_, unwrapped) = keys.unwrap_key(&file).unwrap();
    assert_eq!(unwrapped.as_slice(), content_key.as_slice());
    assert_eq!(
        envelope::decrypt_content(&header, &unwrapped, &file).unwrap(),
        plain
    );
    let decrypted = keys.decrypt(&file).unwrap();
    assert_eq!(decrypted.extension, "zip");
    assert!(
        decrypted.content == plain,
        "content differs from the plaintext"
    );

    // The same key in PKCS#1 form ("RSA PRIVATE KEY") works too.
    let pkcs1 = openssl(dir, &["pkey", "-in", "key.pem", "-traditional"]);
    assert!(String::from_utf8_lossy(&pkcs1).contains("BEGIN RSA PRIVATE KEY"));
    let pkcs1_keys = DecryptionKeys::from_pkcs8_pem(&[&pkcs1]).unwrap();
    assert!(pkcs1_keys.decrypt(&file).unwrap().content == plain);

    // The certificate reads, and its fingerprint is the one openssl reports.
    let certificate = RecipientCertificate::from_pem(&std::fs::read(&cert_pem).unwrap()).unwrap();
    assert_eq!(certificate.key_bits(), 2048);
    let openssl_fingerprint = String::from_utf8(openssl(
        dir,
        &[
            "x509",
            "-in",
            "cert.pem",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    ))
    .unwrap();
    let openssl_fingerprint = openssl_fingerprint
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(certificate.fingerprint_sha256(), openssl_fingerprint);
    let der = openssl(dir, &["x509", "-in", "cert.pem", "-outform", "DER"]);
    assert_eq!(
        RecipientCertificate::from_der(&der)
            .unwrap()
            .fingerprint_sha256(),
        openssl_fingerprint
    );
}

#[test]
fn a_file_we_encrypt_decrypts_with_openssl_alone() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // Our own demo key pair, so this also proves openssl reads the PEMs we write.
    let demo = generate_demo_key_pair(2048, "SFM migrering").unwrap();
    std::fs::write(dir.join("key.pem"), &demo.private_key_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), &demo.certificate_pem).unwrap();
    let subject = String::from_utf8(openssl(
        dir,
        &["x509", "-in", "cert.pem", "-noout", "-subject"],
    ))
    .unwrap();
    assert!(subject.contains("SFM migrering"), "subject: {subject}");

    let plain = sample_zip();
    let recipient = RecipientCertificate::from_pem(demo.certificate_pem.as_bytes()).unwrap();
    let file = envelope::encrypt(&plain, &recipient, DEFAULT_EXTENSION).unwrap();

    // Take the file apart by hand.
    let (key_len, iv_len, ext_len) = (u32_at(&file, 0), u32_at(&file, 4), u32_at(&file, 8));
    assert_eq!((key_len, iv_len, ext_len), (256, 16, 4));
    let iv_at = 12 + key_len;
    let ext_at = iv_at + iv_len;
    let content_at = ext_at + ext_len;
    assert_eq!(&file[ext_at..content_at], b"emlw");
    std::fs::write(dir.join("wrapped.bin"), &file[12..iv_at]).unwrap();
    std::fs::write(dir.join("content.bin"), &file[content_at..]).unwrap();

    let mut unwrap = vec![
        "pkeyutl",
        "-decrypt",
        "-inkey",
        "key.pem",
        "-in",
        "wrapped.bin",
        "-out",
        "content_key.bin",
    ];
    unwrap.extend(OAEP_SHA512);
    openssl(dir, &unwrap);
    let content_key = std::fs::read(dir.join("content_key.bin")).unwrap();
    assert_eq!(content_key.len(), 32);
    let key_hex = hex::encode(&content_key);
    let iv_hex = hex::encode(&file[iv_at..ext_at]);
    openssl(
        dir,
        &[
            "enc",
            "-d",
            "-aes-256-cbc",
            "-K",
            &key_hex,
            "-iv",
            &iv_hex,
            "-in",
            "content.bin",
            "-out",
            "plain.zip",
        ],
    );
    let decrypted = std::fs::read(dir.join("plain.zip")).unwrap();
    assert!(decrypted == plain, "openssl's plaintext differs from ours");
}

#[test]
fn round_trips_with_2048_and_4096_bit_keys() {
    let plain = sample_zip();
    for bits in [2048, 4096] {
        let demo = generate_demo_key_pair(bits, "SFM migrering").unwrap();
        let recipient = RecipientCertificate::from_pem(demo.certificate_pem.as_bytes()).unwrap();
        assert_eq!(recipient.key_bits(), bits);
        let file = envelope::encrypt(&plain, &recipient, DEFAULT_EXTENSION).unwrap();
        assert_eq!(
            envelope::parse_header(&file).unwrap().encrypted_key_len as usize,
            bits / 8
        );
        let decrypted = keys_from(&demo.private_key_pem).decrypt(&file).unwrap();
        assert_eq!(decrypted.extension, "zip");
        assert!(
            decrypted.content == plain,
            "{bits}-bit round trip changed the content"
        );
    }
}

#[test]
fn other_extensions_and_empty_content_round_trip() {
    let demo = generate_demo_key_pair(2048, "SFM migrering").unwrap();
    let recipient = RecipientCertificate::from_pem(demo.certificate_pem.as_bytes()).unwrap();
    let keys = keys_from(&demo.private_key_pem);
    for (content, extension) in [(&b""[..], "zip"), (b"<x/>", "xml"), (&[7u8; 16][..], "blå")] {
        let file = envelope::encrypt(content, &recipient, extension).unwrap();
        let decrypted = keys.decrypt(&file).unwrap();
        assert_eq!(decrypted.extension, extension);
        assert_eq!(decrypted.content, content);
    }
    for bad in ["", "../zip", "a.b", "x\n", &"z".repeat(33)] {
        assert!(matches!(
            envelope::encrypt(b"data", &recipient, bad),
            Err(EnvelopeError::BadExtension)
        ));
    }
}

#[test]
fn during_a_rotation_either_key_decrypts_and_a_foreign_key_does_not() {
    let old = generate_demo_key_pair(2048, "SFM migrering").unwrap();
    let new = generate_demo_key_pair(4096, "SFM migrering").unwrap();
    let foreign = generate_demo_key_pair(2048, "SFM migrering").unwrap();
    let keys = DecryptionKeys::from_pkcs8_pem(&[
        old.private_key_pem.as_bytes(),
        new.private_key_pem.as_bytes(),
    ])
    .unwrap();
    assert_eq!(keys.len(), 2);

    for (pair, content) in [(&old, b"old certificate"), (&new, b"new certificate")] {
        let recipient = RecipientCertificate::from_pem(pair.certificate_pem.as_bytes()).unwrap();
        let file = envelope::encrypt(content, &recipient, DEFAULT_EXTENSION).unwrap();
        assert_eq!(keys.decrypt(&file).unwrap().content, content);
    }

    // Both keys in one PEM file also load as two keys.
    let dir = tempfile::tempdir().unwrap();
    let both = dir.path().join("keys.pem");
    std::fs::write(
        &both,
        format!("{}{}", old.private_key_pem, new.private_key_pem),
    )
    .unwrap();
    assert_eq!(DecryptionKeys::from_pem_files(&[both]).unwrap().len(), 2);

    // A key of another size is not even tried.
    let old_only = keys_from(&old.private_key_pem);
    let new_recipient = RecipientCertificate::from_pem(new.certificate_pem.as_bytes()).unwrap();
    let new_file = envelope::encrypt(b"new", &new_recipient, DEFAULT_EXTENSION).unwrap();
    assert!(matches!(
        old_only.decrypt(&new_file),
        Err(EnvelopeError::NoMatchingKey { keys: 1 })
    ));

    let foreign_recipient =
        RecipientCertificate::from_pem(foreign.certificate_pem.as_bytes()).unwrap();
    let foreign_file = envelope::encrypt(b"elsewhere", &foreign_recipient, "zip").unwrap();
    assert!(matches!(
        keys.decrypt(&foreign_file),
        Err(EnvelopeError::NoMatchingKey { keys: 2 })
    ));
    assert!(matches!(
        keys.unwrap_key(&foreign_file),
        Err(EnvelopeError::NoMatchingKey { .. })
    ));
}

/// One key pair and a file with printable content whose bytes are never valid PKCS#7 padding.
fn text_file() -> (DecryptionKeys, Vec<u8>, Vec<u8>, RecipientCertificate) {
    let demo = generate_demo_key_pair(2048, "SFM migrering").unwrap();
    let recipient = RecipientCertificate::from_pem(demo.certificate_pem.as_bytes()).unwrap();
    let plain: Vec<u8> = b"PasientExport "
        .iter()
        .copied()
        .cycle()
        .take(100)
        .collect();
    let file = envelope::encrypt(&plain, &recipient, DEFAULT_EXTENSION).unwrap();
    (keys_from(&demo.private_key_pem), file, plain, recipient)
}

#[test]
fn truncated_files_are_reported_as_truncated() {
    let (keys, file, _, _) = text_file();
    let content_at = 12 + 256 + 16 + 4;
    assert_eq!(file.len(), content_at + 112);
    // Inside the lengths, the wrapped key, the IV, the extension, at the start of the content and
    // in the middle of a content block.
    for cut in [
        0,
        7,
        12,
        100,
        12 + 256,
        12 + 256 + 10,
        12 + 256 + 18,
        content_at,
        content_at + 5,
        file.len() - 1,
    ] {
        let result = keys.decrypt(&file[..cut]);
        assert!(
            matches!(result, Err(EnvelopeError::Truncated(_))),
            "cut at {cut}: {result:?}"
        );
        assert!(matches!(
            envelope::parse_header(&file[..cut]),
            Err(EnvelopeError::Truncated(_))
        ));
    }
    // Cut at a block boundary, the last remaining block decrypts to plain text, which is not
    // PKCS#7 padding.
    assert!(matches!(
        keys.decrypt(&file[..file.len() - 16]),
        Err(EnvelopeError::BadPadding)
    ));
}

#[test]
fn damaged_ciphertext_is_bad_padding_or_caught_later() {
    let (keys, file, plain, _) = text_file();
    let len = file.len();

    // Flipping the top bit of the last byte of the second-to-last block flips the same bit of the
    // padding byte (12 -> 140 here: 100 bytes of content are padded with 12 bytes of value 12):
    // always invalid padding.
    let mut damaged = file.clone();
    damaged[len - 17] ^= 0x80;
    assert!(matches!(
        keys.decrypt(&damaged),
        Err(EnvelopeError::BadPadding)
    ));

    // A flipped bit in the last block garbles the whole last plaintext block: almost always bad
    // padding, but about 1 time in 256 the garbage ends in a valid padding byte and decryption
    // returns wrong content. Without a MAC nothing here can tell; the zip CRCs catch that case.
    for bit in 0..8 {
        let mut damaged = file.clone();
        damaged[len - 1 - bit] ^= 1 << bit;
        match keys.decrypt(&damaged) {
            Err(EnvelopeError::BadPadding) => {}
            Ok(decrypted) => assert_ne!(decrypted.content, plain),
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }

    // A flipped bit in an early block passes: decryption "succeeds" with wrong content.
    let mut damaged = file.clone();
    damaged[12 + 256 + 16 + 4 + 3] ^= 0x01;
    let decrypted = keys.decrypt(&damaged).unwrap();
    assert_ne!(decrypted.content, plain);
}

#[test]
fn implausible_or_overlong_header_lengths_are_rejected() {
    let (keys, file, _, recipient) = text_file();
    let with_length = |at: usize, value: u32| {
        let mut changed = file.clone();
        changed[at..at + 4].copy_from_slice(&value.to_le_bytes());
        changed
    };

    // Plausible lengths that point past the end of the file: a 4096-bit key length in a file
    // made for 2048 bits, and the longest extension in a file with one block of content.
    let long_key = with_length(0, 512);
    assert!(12 + 512 + 16 + 4 > long_key.len());
    assert!(matches!(
        keys.decrypt(&long_key),
        Err(EnvelopeError::Truncated(_))
    ));
    let mut long_extension = envelope::encrypt(b"x", &recipient, DEFAULT_EXTENSION).unwrap();
    long_extension[8..12].copy_from_slice(&44u32.to_le_bytes());
    assert!(12 + 256 + 16 + 44 > long_extension.len());
    assert!(matches!(
        keys.decrypt(&long_extension),
        Err(EnvelopeError::Truncated(_))
    ));

    // Implausible lengths.
    for (at, value) in [
        (0, 0),
        (0, 127),
        (0, 1025),
        (0, u32::MAX),
        (4, 15),
        (4, 17),
        (4, 0),
        (8, 0),
        (8, 45),
        (8, u32::MAX),
    ] {
        let result = keys.decrypt(&with_length(at, value));
        assert!(
            matches!(result, Err(EnvelopeError::BadHeader(_))),
            "field at {at} = {value}: {result:?}"
        );
    }

    // An extension that is not base64 of a clean UTF-8 name.
    let ext_at = 12 + 256 + 16;
    for bad in [b"em!w", b"Lg==", b"/w==", b"Cg=="] {
        // "em!w" is not base64, "Lg==" is ".", "/w==" is not UTF-8, "Cg==" is a newline.
        let mut changed = file.clone();
        changed[ext_at..ext_at + 4].copy_from_slice(bad);
        assert!(matches!(
            keys.decrypt(&changed),
            Err(EnvelopeError::BadHeader(_))
        ));
    }
}

#[test]
fn bad_key_and_certificate_files_are_named_without_their_content() {
    let demo = generate_demo_key_pair(2048, "SFM migrering").unwrap();
    assert!(matches!(
        DecryptionKeys::from_pkcs8_pem(&[demo.certificate_pem.as_bytes()]),
        Err(EnvelopeError::BadKeyFile { .. })
    ));
    assert!(matches!(
        DecryptionKeys::from_pkcs8_pem(&[]),
        Err(EnvelopeError::BadKeyFile { .. })
    ));
    let missing = PathBuf::from("/nonexistent/sfm-migrering.pem");
    let error = DecryptionKeys::from_pem_files(&[missing]).unwrap_err();
    assert!(error.to_string().contains("/nonexistent/sfm-migrering.pem"));
    assert!(matches!(
        RecipientCertificate::from_pem(demo.private_key_pem.as_bytes()),
        Err(EnvelopeError::BadCertificate(_))
    ));
    assert!(matches!(
        RecipientCertificate::from_der(b"not a certificate"),
        Err(EnvelopeError::BadCertificate(_))
    ));

    // A damaged key body: the error names the key but quotes none of it.
    let body_line = demo.private_key_pem.lines().nth(3).unwrap().to_owned();
    let damaged = demo
        .private_key_pem
        .replace(&body_line, &"A".repeat(body_line.len()));
    let error = DecryptionKeys::from_pkcs8_pem(&[damaged.as_bytes()]).unwrap_err();
    assert!(matches!(error, EnvelopeError::BadKeyFile { .. }));
    assert!(!error.to_string().contains("AAAA"));

    let keys = keys_from(&demo.private_key_pem);
    let debug = format!("{keys:?} {demo:?}");
    assert!(
        !debug.contains(&body_line),
        "Debug output shows key material"
    );
}
