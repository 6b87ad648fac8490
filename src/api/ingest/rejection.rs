//! Why a file was refused: the rejection of each decoding failure, as a code and a message that
//! names element paths, positions and limits, never a value from the file.

use crate::contract::ProblemCode;
use crate::format::archive::ArchiveError;
use crate::format::envelope::EnvelopeError;
use crate::format::patient_file::FormatError;
use crate::format::xml::XmlError;

/// Why a file's content was refused: a rejection code and a message free of personal data (recorded
/// in `sfm.rejections`; the wire's [`crate::contract::Rejection`] is how status shows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ProblemCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ProblemCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// The envelope errors as rejections. Bad padding, no matching key and an unreadable archive are
/// one code (`envelope-undecryptable`) so the API is no padding oracle.
pub fn envelope_rejection(error: &EnvelopeError) -> Refusal {
    let code = match error {
        EnvelopeError::Truncated(_) | EnvelopeError::BadHeader(_) => ProblemCode::EnvelopeMalformed,
        _ => ProblemCode::EnvelopeUndecryptable,
    };
    match code {
        ProblemCode::EnvelopeMalformed => Refusal::new(code, error.to_string()),
        _ => Refusal::new(
            code,
            "the file cannot be decrypted with the API's keys, or it does not decrypt to a readable archive",
        ),
    }
}

pub fn archive_rejection(error: &ArchiveError) -> Refusal {
    let code = match error {
        ArchiveError::TooManyEntries { .. }
        | ArchiveError::NameTooLong { .. }
        | ArchiveError::EntryTooLarge { .. }
        | ArchiveError::TotalTooLarge { .. }
        | ArchiveError::RatioTooHigh { .. } => ProblemCode::ArchiveLimits,
        ArchiveError::UnsafeName { .. } => ProblemCode::ArchivePath,
        // Not readable as a zip: one answer with bad padding (see above).
        _ => {
            return Refusal::new(
                ProblemCode::EnvelopeUndecryptable,
                "the file cannot be decrypted with the API's keys, or it does not decrypt to a readable archive",
            );
        }
    };
    Refusal::new(code, error.to_string())
}

pub fn format_rejection(error: &FormatError) -> Refusal {
    match error {
        FormatError::Archive(e) => archive_rejection(e),
        FormatError::MissingDocument(_)
        | FormatError::MissingMessageFiles { .. }
        | FormatError::UnexpectedEntries { .. } => {
            Refusal::new(ProblemCode::ArchiveContent, error.to_string())
        }
        FormatError::Xml { source, .. } => {
            let code = match source {
                XmlError::Doctype => ProblemCode::XmlDoctype,
                XmlError::WrongRoot { .. } | XmlError::WrongNamespace { .. } => {
                    ProblemCode::XmlUnexpectedRoot
                }
                XmlError::MissingRequired { .. } => ProblemCode::DataQualityMissingField,
                XmlError::InvalidRequired { .. } => ProblemCode::XmlSchema,
                _ => ProblemCode::XmlMalformed,
            };
            Refusal::new(code, error.to_string())
        }
    }
}
