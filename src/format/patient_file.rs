//! From a decrypted export file (the zip inside the envelope) to the model: the one pipeline the
//! migration API runs for a `.pat` (patient) and for `ExportData.dat` (organisation).
//!
//! It checks what ties the zip and the XML together: the main document is present, every message
//! file `Meldinger` names is in the zip (reported as its own error), nothing in the zip is left
//! unexplained, and every message file is safe, well-formed KITH XML. It returns the raw documents
//! too, because the API stores them as they came.
//!
//! Decryption is [`super::envelope`]'s job; this module never sees ciphertext or keys, and its
//! errors name files and elements, never their content.

use std::collections::{HashMap, HashSet};

use super::archive::{ArchiveError, ArchiveLimits, Entry, read_archive};
use super::xml::{
    MessageInfo, XmlError, XmlLimits, parse_message, parse_organisation, parse_patient,
};
use crate::model::{Deviation, OrganisationExport, PatientExport};

/// The patient document's name inside a `.pat`.
pub const PATIENT_DOCUMENT: &str = "PatientData.xml";
/// The organisation document's name inside `ExportData.dat`.
pub const ORGANISATION_DOCUMENT: &str = "ExportData.xml";

/// Limits for one export file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FormatLimits {
    /// Limits for the zip.
    pub archive: ArchiveLimits,
    /// Limits for each XML document in it.
    pub xml: XmlLimits,
}

/// One message file of a patient and what its XML says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageFile {
    /// Its name in the zip.
    pub name: String,
    /// Its kind and id.
    pub info: MessageInfo,
}

/// A patient file, parsed and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct PatientFile {
    /// The model of `PatientData.xml`.
    pub patient: PatientExport,
    /// The message files, in the order `Meldinger` names them.
    pub messages: Vec<MessageFile>,
    /// Every file of the zip as it came (`PatientData.xml` and the message files), for storage.
    pub documents: Vec<Entry>,
    /// Departures from the XSD; the caller's policy decides whether they are acceptable.
    pub deviations: Vec<Deviation>,
}

/// The organisation file, parsed and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct OrganisationFile {
    /// The model of `ExportData.xml`.
    pub organisation: OrganisationExport,
    /// The zip's one file as it came, for storage.
    pub documents: Vec<Entry>,
    /// Departures from the XSD.
    pub deviations: Vec<Deviation>,
}

/// Why an export file is refused.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The zip is unsafe or unreadable.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The main document is not in the zip.
    #[error("the file holds no {0}")]
    MissingDocument(&'static str),
    /// A document is unsafe, not well-formed or lacks what the API needs.
    #[error("{document} is refused: {source}")]
    Xml {
        /// The document's name in the zip.
        document: String,
        /// Why.
        #[source]
        source: XmlError,
    },
    /// Message files that `Meldinger` names are not in the zip.
    #[error(
        "{} message file(s) named in Meldinger are missing from the file, the first {}",
        .names.len(), shown(&.names[0])
    )]
    MissingMessageFiles {
        /// The missing names, as `MeldingsFil` writes them.
        names: Vec<String>,
    },
    /// Files in the zip that nothing names.
    #[error(
        "the file holds {} entries nothing refers to, the first {}",
        .names.len(), shown(&.names[0])
    )]
    UnexpectedEntries {
        /// Their names.
        names: Vec<String>,
    },
}

/// Reads a decrypted `.pat` (a zip of `PatientData.xml` and message files).
pub fn read_patient_file(
    plain_zip: &[u8],
    limits: &FormatLimits,
) -> Result<PatientFile, FormatError> {
    let archive = read_archive(plain_zip, &limits.archive)?;
    let document = archive
        .get(PATIENT_DOCUMENT)
        .ok_or(FormatError::MissingDocument(PATIENT_DOCUMENT))?;
    let parsed = parse_patient(&document.data, &limits.xml).map_err(|source| FormatError::Xml {
        document: PATIENT_DOCUMENT.into(),
        source,
    })?;
    let patient = parsed.value;
    let mut deviations = parsed.deviations;

    // Zip names use '/', MeldingsFil is a Windows path: compare with one separator.
    let by_name: HashMap<String, usize> = archive
        .entries
        .iter()
        .enumerate()
        .map(|(i, entry)| (entry.name.replace('\\', "/"), i))
        .collect();
    let mut referenced = HashSet::new();
    let mut missing = Vec::new();
    let mut messages = Vec::new();
    for (position, file) in patient
        .messages
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.file.as_deref().map(|f| (i, f)))
    {
        let key = file.replace('\\', "/");
        let Some(&index) = by_name.get(&key) else {
            missing.push(file.to_owned());
            continue;
        };
        if !referenced.insert(index) {
            deviations.push(Deviation {
                path: format!(
                    "PasientExport/Meldinger/Melding[{}]/MeldingsFil",
                    position + 1
                ),
                message: "names a message file another Melding already names".into(),
            });
            continue;
        }
        let entry = &archive.entries[index];
        let info = parse_message(&entry.data, &limits.xml).map_err(|source| FormatError::Xml {
            document: entry.name.clone(),
            source,
        })?;
        messages.push(MessageFile {
            name: entry.name.clone(),
            info,
        });
    }
    if !missing.is_empty() {
        return Err(FormatError::MissingMessageFiles { names: missing });
    }
    let unexpected: Vec<String> = archive
        .entries
        .iter()
        .enumerate()
        .filter(|(i, entry)| entry.name != PATIENT_DOCUMENT && !referenced.contains(i))
        .map(|(_, entry)| entry.name.clone())
        .collect();
    if !unexpected.is_empty() {
        return Err(FormatError::UnexpectedEntries { names: unexpected });
    }
    Ok(PatientFile {
        patient,
        messages,
        documents: archive.entries,
        deviations,
    })
}

/// Reads a decrypted `ExportData.dat` (a zip of `ExportData.xml`).
pub fn read_organisation_file(
    plain_zip: &[u8],
    limits: &FormatLimits,
) -> Result<OrganisationFile, FormatError> {
    let archive = read_archive(plain_zip, &limits.archive)?;
    let document = archive
        .get(ORGANISATION_DOCUMENT)
        .ok_or(FormatError::MissingDocument(ORGANISATION_DOCUMENT))?;
    let parsed =
        parse_organisation(&document.data, &limits.xml).map_err(|source| FormatError::Xml {
            document: ORGANISATION_DOCUMENT.into(),
            source,
        })?;
    let unexpected: Vec<String> = archive
        .entries
        .iter()
        .filter(|entry| entry.name != ORGANISATION_DOCUMENT)
        .map(|entry| entry.name.clone())
        .collect();
    if !unexpected.is_empty() {
        return Err(FormatError::UnexpectedEntries { names: unexpected });
    }
    Ok(OrganisationFile {
        organisation: parsed.value,
        documents: archive.entries,
        deviations: parsed.deviations,
    })
}

/// A file name fit for an error message: escaped, at most 80 characters.
fn shown(name: &str) -> String {
    let mut text: String = name.chars().take(80).collect();
    if name.chars().count() > 80 {
        text.push('…');
    }
    format!("{text:?}")
}
