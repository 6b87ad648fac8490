//! NHN's encryption envelope around every `.dat`, `.pat` and `.rpt` file of an FM export (DESIGN
//! section 5), byte for byte as NHN's .NET exporter writes it:
//!
//! ```text
//! u32 LE  encrypted key length   (the RSA modulus size: 256 bytes for 2048-bit keys)
//! u32 LE  IV length              (always 16)
//! u32 LE  extension length       (length of the base64 text below)
//! [..]    AES-256 key, encrypted with RSA-OAEP, SHA-512 as digest and MGF1 (.NET `OaepSHA512`)
//! [16]    AES-CBC IV
//! [..]    ASCII of base64 of the UTF-8 extension of the inner file (`zip` -> `emlw`)
//! [..]    the content, AES-256-CBC with PKCS#7 padding
//! ```
//!
//! There is no MAC: integrity comes from the zip CRCs inside and from our own digests. All
//! cryptography is aws-lc-rs, whose RSA is constant-time; the API decrypts whatever a key holder
//! sends, so it must not become a timing oracle (the RustCrypto `rsa` crate is not used for that
//! reason, RUSTSEC-2023-0071).
//!
//! Nothing here may put key material, the content key or decrypted content into an error message,
//! a log line or `Debug` output.

use std::fmt;
use std::path::PathBuf;

use aws_lc_rs::cipher::{
    AES_256, DecryptionContext, PaddedBlockDecryptingKey, PaddedBlockEncryptingKey,
    UnboundCipherKey,
};
use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{
    KeyPair as RsaKeyPair, KeySize, OAEP_SHA512_MGF1SHA512, OaepPrivateDecryptingKey,
    OaepPublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// The extension NHN's exporter writes: every file is a zip.
pub const DEFAULT_EXTENSION: &str = "zip";

/// Three little-endian u32 lengths.
const LENGTHS_LEN: usize = 12;
/// AES block and IV size.
const BLOCK_LEN: usize = 16;
/// AES-256 key size, the only content key size NHN uses.
const CONTENT_KEY_LEN: usize = 32;
/// RSA ciphertext sizes we accept: 1024 to 8192-bit moduli. A length outside this is not an RSA
/// ciphertext, and refusing it early keeps a corrupt header from reading far into the file.
const MIN_ENCRYPTED_KEY_LEN: u32 = 128;
const MAX_ENCRYPTED_KEY_LEN: u32 = 1024;
/// Longest extension text (UTF-8 bytes) we write or accept; its base64 is at most 44 characters.
const MAX_EXTENSION_BYTES: usize = 32;
const MAX_EXTENSION_BASE64: u32 = 44;

/// Why an envelope could not be read, written or keyed. Messages say which part failed and never
/// contain key material or content.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// A length in the header points past the end of the file, or the content is cut short (empty
    /// or not a whole number of AES blocks). Usually an incomplete upload or copy.
    #[error("the envelope is truncated: {0}")]
    Truncated(&'static str),
    /// A header length is implausible, the IV is not 16 bytes, or the extension is not base64 of a
    /// short UTF-8 name: this is not NHN's envelope, or it is corrupt.
    #[error("the envelope header is not valid: {0}")]
    BadHeader(&'static str),
    /// None of the private keys unwrapped the content key: the file was encrypted to another
    /// certificate than the ones this service holds.
    #[error(
        "none of the {keys} private key(s) unwraps the content key: the file was encrypted to another certificate"
    )]
    NoMatchingKey { keys: usize },
    /// AES-CBC decryption did not end in valid PKCS#7 padding. Without a MAC a corrupt ciphertext
    /// and a wrong content key look the same, so this one variant covers both. Corruption before
    /// the last block usually passes this check and is caught later by the zip CRCs.
    #[error(
        "the content does not decrypt to valid PKCS#7 padding: the ciphertext is corrupt (without a MAC this cannot be told apart from a wrong key)"
    )]
    BadPadding,
    /// A private key file cannot be read or holds no usable RSA key.
    #[error("private key {source_name} cannot be used: {reason}")]
    BadKeyFile {
        /// The file path, or the position of the key in the list it came from.
        source_name: String,
        reason: String,
    },
    /// The recipient certificate cannot be read or has no usable RSA public key.
    #[error("the recipient certificate cannot be used: {0}")]
    BadCertificate(&'static str),
    /// The extension to write is empty, too long or contains control characters or separators.
    #[error(
        "the extension must be 1 to 32 bytes of UTF-8 without control characters, dots or path separators"
    )]
    BadExtension,
    /// The crypto library failed to encrypt or to generate a key (it reports no detail).
    #[error("the crypto library failed to {0}")]
    Crypto(&'static str),
}

/// The parsed fixed part of an envelope, everything before the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// Length of the RSA-OAEP ciphertext of the content key (the modulus size in bytes).
    pub encrypted_key_len: u32,
    /// Length of the IV; always 16 once parsed.
    pub iv_len: u32,
    /// Length of the base64 text of the extension.
    pub extension_len: u32,
    /// The decoded extension of the inner file, `zip` in every export seen so far.
    pub extension: String,
    /// Where the AES ciphertext starts in the file.
    pub content_offset: usize,
}

impl EnvelopeHeader {
    fn encrypted_key<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        &data[LENGTHS_LEN..LENGTHS_LEN + self.encrypted_key_len as usize]
    }

    fn iv_offset(&self) -> usize {
        LENGTHS_LEN + self.encrypted_key_len as usize
    }
}

/// Reads and checks the header of an envelope: that the lengths are plausible (encrypted key
/// 128..=1024 bytes, IV exactly 16, extension base64 of a short UTF-8 name), that they fit in the
/// file, and that the content is non-empty and a whole number of AES blocks.
pub fn parse_header(data: &[u8]) -> Result<EnvelopeHeader, EnvelopeError> {
    if data.len() < LENGTHS_LEN {
        return Err(EnvelopeError::Truncated(
            "the file is shorter than the three length fields",
        ));
    }
    let length_at =
        |at: usize| u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    let encrypted_key_len = length_at(0);
    let iv_len = length_at(4);
    let extension_len = length_at(8);

    if !(MIN_ENCRYPTED_KEY_LEN..=MAX_ENCRYPTED_KEY_LEN).contains(&encrypted_key_len) {
        return Err(EnvelopeError::BadHeader(
            "the encrypted key length is not that of a 1024 to 8192-bit RSA ciphertext",
        ));
    }
    if iv_len as usize != BLOCK_LEN {
        return Err(EnvelopeError::BadHeader("the IV length is not 16 bytes"));
    }
    if extension_len == 0 || extension_len > MAX_EXTENSION_BASE64 {
        return Err(EnvelopeError::BadHeader(
            "the extension length is not that of a short base64 name",
        ));
    }

    let extension_offset = LENGTHS_LEN + encrypted_key_len as usize + BLOCK_LEN;
    let content_offset = extension_offset + extension_len as usize;
    if data.len() < extension_offset {
        return Err(EnvelopeError::Truncated(
            "the encrypted key or the IV runs past the end of the file",
        ));
    }
    if data.len() < content_offset {
        return Err(EnvelopeError::Truncated(
            "the extension runs past the end of the file",
        ));
    }
    let extension = decode_extension(&data[extension_offset..content_offset])?;
    check_content_length(data.len() - content_offset)?;

    Ok(EnvelopeHeader {
        encrypted_key_len,
        iv_len,
        extension_len,
        extension,
        content_offset,
    })
}

fn check_content_length(len: usize) -> Result<(), EnvelopeError> {
    if len == 0 {
        return Err(EnvelopeError::Truncated(
            "the file ends before the encrypted content",
        ));
    }
    if !len.is_multiple_of(BLOCK_LEN) {
        return Err(EnvelopeError::Truncated(
            "the encrypted content is not a whole number of 16-byte AES blocks",
        ));
    }
    Ok(())
}

fn decode_extension(encoded: &[u8]) -> Result<String, EnvelopeError> {
    let bad = || EnvelopeError::BadHeader("the extension is not base64 of a short UTF-8 name");
    let bytes = BASE64.decode(encoded).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    if !is_valid_extension(&text) {
        return Err(bad());
    }
    Ok(text)
}

/// An extension names the inner file type; it must not smuggle in a path or control characters.
fn is_valid_extension(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_EXTENSION_BYTES
        && !text
            .chars()
            .any(|c| c.is_control() || matches!(c, '/' | '\\' | '.' | ':'))
}

/// The public key of the "SFM migrering" certificate that every file is encrypted to.
#[derive(Clone)]
pub struct RecipientCertificate {
    key: PublicEncryptingKey,
    fingerprint: String,
}

impl RecipientCertificate {
    /// Reads the first `CERTIFICATE` block of a PEM document.
    pub fn from_pem(pem: &[u8]) -> Result<Self, EnvelopeError> {
        for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
            let block = block.map_err(|_| EnvelopeError::BadCertificate("the PEM is malformed"))?;
            if block.label == "CERTIFICATE" {
                return Self::from_der(&block.contents);
            }
        }
        Err(EnvelopeError::BadCertificate(
            "the PEM holds no CERTIFICATE block",
        ))
    }

    /// Reads a DER X.509 certificate whose subject public key is RSA (2048 to 8192 bits).
    pub fn from_der(der: &[u8]) -> Result<Self, EnvelopeError> {
        let (_, certificate) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| EnvelopeError::BadCertificate("it is not a DER X.509 certificate"))?;
        let public_key =
            PublicEncryptingKey::from_der(certificate.public_key().raw).map_err(|_| {
                EnvelopeError::BadCertificate("its public key is not RSA of 2048 to 8192 bits")
            })?;
        OaepPublicEncryptingKey::new(public_key.clone())
            .map_err(|_| EnvelopeError::BadCertificate("its RSA key cannot do OAEP"))?;
        let fingerprint = hex::encode(digest::digest(&digest::SHA256, der));
        Ok(Self {
            key: public_key,
            fingerprint,
        })
    }

    /// Size of the RSA modulus in bits.
    pub fn key_bits(&self) -> usize {
        self.key.key_size_bits()
    }

    /// SHA-256 of the certificate's DER, lowercase hex without separators: what
    /// `openssl x509 -noout -fingerprint -sha256` prints, lowercased and without colons.
    pub fn fingerprint_sha256(&self) -> String {
        self.fingerprint.clone()
    }
}

impl fmt::Debug for RecipientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecipientCertificate")
            .field("key_bits", &self.key_bits())
            .field("fingerprint_sha256", &self.fingerprint)
            .finish()
    }
}

/// Encrypts `content` into an envelope for `recipient`, with a fresh random AES-256 key and IV, and
/// `extension` (normally [`DEFAULT_EXTENSION`]) naming the inner file type.
pub fn encrypt(
    content: &[u8],
    recipient: &RecipientCertificate,
    extension: &str,
) -> Result<Vec<u8>, EnvelopeError> {
    if !is_valid_extension(extension) {
        return Err(EnvelopeError::BadExtension);
    }
    let mut content_key = [0u8; CONTENT_KEY_LEN];
    aws_lc_rs::rand::fill(&mut content_key)
        .map_err(|_| EnvelopeError::Crypto("generate a content key"))?;

    let mut ciphertext = content.to_vec();
    let cipher_key = UnboundCipherKey::new(&AES_256, &content_key)
        .and_then(PaddedBlockEncryptingKey::cbc_pkcs7)
        .map_err(|_| EnvelopeError::Crypto("set up AES-256-CBC"))?;
    let context = cipher_key
        .encrypt(&mut ciphertext)
        .map_err(|_| EnvelopeError::Crypto("encrypt the content"))?;
    let iv: &[u8] = (&context)
        .try_into()
        .map_err(|_| EnvelopeError::Crypto("return the IV"))?;

    let oaep = OaepPublicEncryptingKey::new(recipient.key.clone())
        .map_err(|_| EnvelopeError::Crypto("set up RSA-OAEP"))?;
    let mut encrypted_key = vec![0u8; oaep.ciphertext_size()];
    let wrapped_len = oaep
        .encrypt(
            &OAEP_SHA512_MGF1SHA512,
            &content_key,
            &mut encrypted_key,
            None,
        )
        .map_err(|_| EnvelopeError::Crypto("encrypt the content key with RSA-OAEP"))?
        .len();
    encrypted_key.truncate(wrapped_len);
    wipe(&mut content_key);

    let extension_text = BASE64.encode(extension.as_bytes());
    let mut out = Vec::with_capacity(
        LENGTHS_LEN + encrypted_key.len() + iv.len() + extension_text.len() + ciphertext.len(),
    );
    for len in [encrypted_key.len(), iv.len(), extension_text.len()] {
        let len = u32::try_from(len).map_err(|_| EnvelopeError::Crypto("size the header"))?;
        out.extend_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(&encrypted_key);
    out.extend_from_slice(iv);
    out.extend_from_slice(extension_text.as_bytes());
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// What an envelope held: the inner file's extension and its bytes (normally a zip).
pub struct Decrypted {
    pub extension: String,
    pub content: Vec<u8>,
}

impl fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decrypted")
            .field("extension", &self.extension)
            .field("content_len", &self.content.len())
            .finish()
    }
}

/// The private keys of the "SFM migrering" certificate(s) this service holds. The envelope names no
/// key, so during a rotation several are loaded and each is tried in order.
pub struct DecryptionKeys {
    keys: Vec<OaepPrivateDecryptingKey>,
}

impl DecryptionKeys {
    /// Loads one or more PEM files, each holding one or more RSA private keys.
    pub fn from_pem_files(paths: &[PathBuf]) -> Result<Self, EnvelopeError> {
        let mut keys = Vec::new();
        for path in paths {
            let source_name = path.display().to_string();
            let pem = std::fs::read(path).map_err(|error| EnvelopeError::BadKeyFile {
                source_name: source_name.clone(),
                reason: format!("it cannot be read ({})", error.kind()),
            })?;
            keys.extend(keys_from_pem(&pem, &source_name)?);
        }
        Self::from_keys(keys)
    }

    /// Loads RSA private keys from PEM documents: PKCS#8 (`PRIVATE KEY`) or PKCS#1
    /// (`RSA PRIVATE KEY`), one or more per document. Other blocks, such as a certificate kept in the
    /// same file, are skipped; a document without any key is an error.
    pub fn from_pkcs8_pem(pems: &[&[u8]]) -> Result<Self, EnvelopeError> {
        let mut keys = Vec::new();
        for (index, pem) in pems.iter().enumerate() {
            keys.extend(keys_from_pem(pem, &format!("number {}", index + 1))?);
        }
        Self::from_keys(keys)
    }

    fn from_keys(keys: Vec<OaepPrivateDecryptingKey>) -> Result<Self, EnvelopeError> {
        if keys.is_empty() {
            return Err(EnvelopeError::BadKeyFile {
                source_name: "list".to_owned(),
                reason: "no private key was given".to_owned(),
            });
        }
        Ok(Self { keys })
    }

    /// How many keys are loaded.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: loading refuses an empty key list.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Parses the header and decrypts the whole envelope.
    pub fn decrypt(&self, data: &[u8]) -> Result<Decrypted, EnvelopeError> {
        let (header, mut content_key) = self.unwrap_key(data)?;
        let content = decrypt_content(&header, &content_key, data);
        wipe(&mut content_key);
        Ok(Decrypted {
            extension: header.extension,
            content: content?,
        })
    }

    /// The RSA step alone: parses the header and unwraps the AES-256 content key with the first
    /// key that accepts it. Keys whose modulus size differs from the encrypted key length are not
    /// tried.
    pub fn unwrap_key(&self, data: &[u8]) -> Result<(EnvelopeHeader, [u8; 32]), EnvelopeError> {
        let header = parse_header(data)?;
        let encrypted_key = header.encrypted_key(data);
        let mut plaintext = [0u8; MAX_ENCRYPTED_KEY_LEN as usize];
        for key in &self.keys {
            if key.key_size_bytes() != encrypted_key.len() {
                continue;
            }
            let Ok(unwrapped) =
                key.decrypt(&OAEP_SHA512_MGF1SHA512, encrypted_key, &mut plaintext, None)
            else {
                continue;
            };
            let content_key = <[u8; CONTENT_KEY_LEN]>::try_from(&*unwrapped).map_err(|_| {
                EnvelopeError::BadHeader("the unwrapped content key is not 32 bytes (AES-256)")
            });
            wipe(&mut plaintext);
            return Ok((header, content_key?));
        }
        Err(EnvelopeError::NoMatchingKey {
            keys: self.keys.len(),
        })
    }
}

impl fmt::Debug for DecryptionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits: Vec<usize> = self.keys.iter().map(|key| key.key_size_bits()).collect();
        f.debug_struct("DecryptionKeys")
            .field("key_bits", &bits)
            .finish_non_exhaustive()
    }
}

fn keys_from_pem(
    pem: &[u8],
    source_name: &str,
) -> Result<Vec<OaepPrivateDecryptingKey>, EnvelopeError> {
    let bad = |reason: &str| EnvelopeError::BadKeyFile {
        source_name: source_name.to_owned(),
        reason: reason.to_owned(),
    };
    let mut keys = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|_| bad("the PEM is malformed"))?;
        let private_key = match block.label.as_str() {
            "PRIVATE KEY" => PrivateDecryptingKey::from_pkcs8(&block.contents)
                .map_err(|_| bad("the PKCS#8 key is not RSA of 2048 to 8192 bits"))?,
            "RSA PRIVATE KEY" => {
                let key_pair = RsaKeyPair::from_der(&block.contents)
                    .map_err(|_| bad("the PKCS#1 key is not RSA of 2048 to 8192 bits"))?;
                let pkcs8 = key_pair
                    .as_der()
                    .map_err(|_| bad("the PKCS#1 key cannot be re-encoded"))?;
                PrivateDecryptingKey::from_pkcs8(pkcs8.as_ref())
                    .map_err(|_| bad("the PKCS#1 key is not usable for decryption"))?
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(bad(
                    "it is password-protected; store it unencrypted in the Kubernetes Secret",
                ));
            }
            _ => continue,
        };
        let key = OaepPrivateDecryptingKey::new(private_key)
            .map_err(|_| bad("the RSA key cannot do OAEP"))?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(bad("it holds no PRIVATE KEY or RSA PRIVATE KEY block"));
    }
    Ok(keys)
}

/// The AES step alone: decrypts the content of `data` (the whole envelope, whose header is
/// `header`) with the unwrapped content key and removes the PKCS#7 padding.
pub fn decrypt_content(
    header: &EnvelopeHeader,
    key: &[u8; 32],
    data: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let iv_offset = header.iv_offset();
    if data.len() < header.content_offset || header.content_offset < iv_offset + BLOCK_LEN {
        return Err(EnvelopeError::Truncated(
            "the file is shorter than its header says",
        ));
    }
    let ciphertext = &data[header.content_offset..];
    check_content_length(ciphertext.len())?;
    let mut iv = [0u8; BLOCK_LEN];
    iv.copy_from_slice(&data[iv_offset..iv_offset + BLOCK_LEN]);

    let cipher_key = UnboundCipherKey::new(&AES_256, key)
        .and_then(PaddedBlockDecryptingKey::cbc_pkcs7)
        .map_err(|_| EnvelopeError::Crypto("set up AES-256-CBC"))?;
    let mut content = ciphertext.to_vec();
    let plaintext_len = cipher_key
        .decrypt(
            &mut content,
            DecryptionContext::Iv128(FixedLength::from(iv)),
        )
        .map_err(|_| EnvelopeError::BadPadding)?
        .len();
    content.truncate(plaintext_len);
    Ok(content)
}

/// A private key and self-signed certificate for demos and tests, in PEM.
pub struct DemoKeyPair {
    /// PKCS#8 `PRIVATE KEY` PEM.
    pub private_key_pem: String,
    /// `CERTIFICATE` PEM.
    pub certificate_pem: String,
}

impl fmt::Debug for DemoKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoKeyPair")
            .field("private_key_pem", &"<redacted>")
            .field("certificate_pem", &self.certificate_pem)
            .finish()
    }
}

/// Generates an RSA key (2048, 3072 or 4096 bits) with aws-lc-rs and a self-signed certificate for
/// it with `CN=common_name` (NHN's is "SFM migrering") and the key usages for key transport. The
/// certificate uses rcgen's default validity (1975 to 4096): it is for demos, not for trust.
pub fn generate_demo_key_pair(
    bits: usize,
    common_name: &str,
) -> Result<DemoKeyPair, EnvelopeError> {
    let size = match bits {
        2048 => KeySize::Rsa2048,
        3072 => KeySize::Rsa3072,
        4096 => KeySize::Rsa4096,
        _ => {
            return Err(EnvelopeError::Crypto(
                "generate an RSA key of that size (use 2048, 3072 or 4096)",
            ));
        }
    };
    let private_key = PrivateDecryptingKey::generate(size)
        .map_err(|_| EnvelopeError::Crypto("generate an RSA key"))?;
    let pkcs8 = private_key
        .as_der()
        .map_err(|_| EnvelopeError::Crypto("encode the RSA key as PKCS#8"))?;
    let signing_key = rcgen::KeyPair::try_from(pkcs8.as_ref())
        .map_err(|_| EnvelopeError::Crypto("load the RSA key for signing"))?;

    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|_| EnvelopeError::Crypto("set up the certificate"))?;
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name = subject;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyEncipherment,
        rcgen::KeyUsagePurpose::DataEncipherment,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let certificate = params
        .self_signed(&signing_key)
        .map_err(|_| EnvelopeError::Crypto("sign the demo certificate"))?;
    Ok(DemoKeyPair {
        private_key_pem: signing_key.serialize_pem(),
        certificate_pem: certificate.pem(),
    })
}

/// Best-effort overwrite of a secret before its memory is released; `black_box` keeps the compiler
/// from dropping the writes as dead stores. aws-lc-rs keeps its own copies in its key schedules.
fn wipe(secret: &mut [u8]) {
    secret.fill(0);
    std::hint::black_box(secret);
}
