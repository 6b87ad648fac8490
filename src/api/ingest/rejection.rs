//! Why a file was refused: the rejection of each decoding failure, as a code and a message that
//! names element paths, positions and limits, never a value from the file.

use crate::contract::ProblemCode;
use crate::format::archive::ArchiveError;
use crate::format::envelope::EnvelopeError;
use crate::format::patient_file::FormatError;
use crate::format::xml::XmlError;

/// Why a file's content was refused: a rejection code and a message free of personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ProblemCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ProblemCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

/// The envelope errors as rejections. Bad padding, no matching key and an unreadable archive are
/// one code (`envelope-undecryptable`) so the API is no padding oracle.
pub fn envelope_rejection(error: &EnvelopeError) -> Rejection {
    let code = match error {
        EnvelopeError::Truncated(_) | EnvelopeError::BadHeader(_) => ProblemCode::EnvelopeMalformed,
        _ => ProblemCode::EnvelopeUndecryptable,
    };
    match code {
        ProblemCode::EnvelopeMalformed => Rejection::new(code, error.to_string()),
        _ => Rejection::new(
            code,
            "the file cannot be decrypted with the API's keys, or it does not decrypt to a readable archive",
        ),
    }
}

pub fn archive_rejection(error: &ArchiveError) -> Rejection {
    let code = match error {
        ArchiveError::TooManyEntries { .. }
        | ArchiveError::NameTooLong { .. }
        | ArchiveError::EntryTooLarge { .. }
        | ArchiveError::TotalTooLarge { .. }
        | ArchiveError::RatioTooHigh { .. } => ProblemCode::ArchiveLimits,
        ArchiveError::UnsafeName { .. } => ProblemCode::ArchivePath,
        // Not readable as a zip: one answer with bad padding (see above).
        _ => {
            return Rejection::new(
                ProblemCode::EnvelopeUndecryptable,
                "the file cannot be decrypted with the API's keys, or it does not decrypt to a readable archive",
            );
        }
    };
    Rejection::new(code, error.to_string())
}

pub fn format_rejection(error: &FormatError) -> Rejection {
    match error {
        FormatError::Archive(e) => archive_rejection(e),
        FormatError::MissingDocument(_)
        | FormatError::MissingMessageFiles { .. }
        | FormatError::UnexpectedEntries { .. } => {
            Rejection::new(ProblemCode::ArchiveContent, error.to_string())
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
            Rejection::new(code, error.to_string())
        }
    }
}
