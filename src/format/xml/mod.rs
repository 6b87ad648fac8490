//! Streaming parse of the export's XML: `ExportImport` (organisation file) and `PasientExport`
//! (patient) into [`crate::model`], and the KITH message files (`MsgHead`, `AppRec`) a patient
//! carries, of which only the message id is extracted.
//!
//! Defences come before parsing: the prolog is scanned and any DOCTYPE is refused (so no DTD, no
//! entity can be declared and the billion-laughs family cannot start), the text must be UTF-8 and
//! declare no other encoding, and the recording bounds nesting depth and element count as it goes,
//! so hostile input costs at most one pass over its bytes.
//!
//! The pass is libxml2's ([`xsd`]): it checks well-formedness, validates the export's documents
//! against NHN's XSD, and its SAX callbacks record the document ([`cursor::Events`]) that the
//! model parsers then walk. What libxml2 finds not well-formed is an error, and every departure
//! from the XSD is a [`Deviation`]; real exports drift from the XSD, and whether deviations are
//! acceptable is the caller's policy. Only what the API cannot do without (the patient's id and at
//! least one identifier, an institution) is an error of the parse itself.
//!
//! Errors and deviations name elements and positions, never values: nothing from the document's
//! text reaches a message.

mod cursor;
mod message;
mod organisation;
mod patient;
mod prolog;
mod values;
mod xsd;

pub use message::{MessageInfo, MessageKind, parse_message};
pub use organisation::parse_organisation;
pub use patient::parse_patient;
pub use prolog::check_prolog;
pub use xsd::SCHEMA;

use crate::model::Deviation;

/// The namespace of `ExportImport` and `PasientExport`.
pub const EXPORT_NAMESPACE: &str =
    "http://www.kith.no/xmlstds/eresept/forskrivningsmodul/export/2019-11-13";

/// Bounds on one XML document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XmlLimits {
    /// Deepest element nesting. The XSD needs about 15 levels, KITH messages about 20.
    pub max_depth: usize,
    /// Most elements in one document. A large patient has around 100,000.
    pub max_elements: usize,
    /// Most deviations kept per document; the rest are counted in one closing deviation.
    pub max_deviations: usize,
}

impl Default for XmlLimits {
    fn default() -> Self {
        Self {
            max_depth: 64,
            max_elements: 2_000_000,
            max_deviations: 1_000,
        }
    }
}

/// A parsed document and where it departed from the XSD.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed<T> {
    /// The model.
    pub value: T,
    /// Departures from the XSD, in document order.
    pub deviations: Vec<Deviation>,
}

/// Why a document is refused.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// A DOCTYPE (and with it DTDs and entity declarations) is never accepted.
    #[error("the document declares a DOCTYPE; DTDs and entity declarations are refused")]
    Doctype,
    /// The bytes are not UTF-8.
    #[error("the document is not UTF-8 text")]
    NotUtf8,
    /// The document declares or is in another encoding.
    #[error("the document is in encoding {0}; only UTF-8 is accepted")]
    UnsupportedEncoding(String),
    /// Nesting deeper than [`XmlLimits::max_depth`].
    #[error("the document nests elements deeper than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// More elements than [`XmlLimits::max_elements`].
    #[error("the document has more than {limit} elements")]
    TooManyElements {
        /// The limit.
        limit: usize,
    },
    /// Not well-formed (namespace-aware) XML.
    #[error("the document is not well-formed XML at byte {position}: {reason}")]
    Malformed {
        /// Byte offset where the parser stopped.
        position: u64,
        /// What is wrong (names markup, never text content).
        reason: String,
    },
    /// No root element.
    #[error("the document has no root element")]
    NoRoot,
    /// The root element is not the expected one.
    #[error("the root element is {found}, expected {expected}")]
    WrongRoot {
        /// The expected local name(s).
        expected: &'static str,
        /// The local name found.
        found: String,
    },
    /// libxml2 finds the document not well-formed (after the parse here accepted it: libxml2 also
    /// checks names, characters and namespaces to the letter).
    #[error("the document is not well-formed XML at line {line}: {reason}")]
    NotWellFormed {
        /// The line libxml2 stopped at.
        line: u32,
        /// libxml2's reason, without document content.
        reason: String,
    },
    /// Larger than libxml2 can take in one call (2 GiB).
    #[error("the document is too large for the XML validator")]
    TooLarge,
    /// NHN's XSD could not be compiled: a fault of this program, not of the file.
    #[error("the XSD validator is unavailable: {0}")]
    SchemaUnavailable(String),
    /// The root element is in the wrong namespace.
    #[error("the root element is not in the namespace {expected}")]
    WrongNamespace {
        /// The expected namespace.
        expected: &'static str,
    },
    /// An element the API cannot do without is missing.
    #[error("required element {path} is missing")]
    MissingRequired {
        /// Its path.
        path: String,
    },
    /// An element the API cannot do without has an unusable value.
    #[error("element {path} does not hold {expected}")]
    InvalidRequired {
        /// Its path.
        path: String,
        /// What it should hold.
        expected: &'static str,
    },
}

#[cfg(test)]
mod tests;

/// libxml2's verdict under NHN's XSD on a document [`parse_patient`] or [`parse_organisation`]
/// accepted (they call it; it must not see a document that did not pass [`check_prolog`] and the
/// parse's bounds): not well-formed is an error, every departure from the XSD a deviation (at most
/// [`XmlLimits::max_deviations`] and one counting the rest). CPU work: run a large document on a
/// blocking thread.
pub fn xsd_departures(xml: &[u8], limits: &XmlLimits) -> Result<Vec<Deviation>, XmlError> {
    match xsd::validate(xml, limits.max_deviations)? {
        xsd::Verdict::Malformed { line, reason } => Err(XmlError::NotWellFormed { line, reason }),
        xsd::Verdict::Departures(departures) => Ok(departures),
    }
}

/// Compiles NHN's XSD now (once per process; otherwise the first validation does), so that a
/// program can fail at start-up rather than at its first file.
pub fn compile_xsd() -> Result<(), XmlError> {
    xsd::compile_once()
}

/// Whether a document is read against NHN's XSD or only for well-formedness.
#[derive(Clone, Copy)]
enum Schema {
    /// `ExportImport` and `PasientExport`.
    Nhn,
    /// The KITH messages, which NHN's XSD does not cover.
    WellFormedOnly,
}

/// A document read by libxml2 in one pass: its events for the model parsers and its departures
/// from NHN's XSD. Refused before libxml2 sees it when its prolog or encoding is not acceptable;
/// refused after when it passes a bound or libxml2 finds it not well-formed.
fn read_document(
    xml: &[u8],
    limits: &XmlLimits,
    schema: Schema,
) -> Result<(cursor::Events, Vec<Deviation>), XmlError> {
    check_prolog(xml)?;
    std::str::from_utf8(xml).map_err(|_| XmlError::NotUtf8)?;
    let mut events = cursor::Events::new(limits);
    let verdict = match schema {
        Schema::Nhn => xsd::validate_and_record(xml, limits.max_deviations, &mut events)?,
        Schema::WellFormedOnly => xsd::record_well_formed(xml, &mut events)?,
    };
    if let Some(refusal) = events.take_refusal() {
        return Err(refusal);
    }
    match verdict {
        xsd::Verdict::Malformed { line, reason } => Err(XmlError::NotWellFormed { line, reason }),
        xsd::Verdict::Departures(departures) => Ok((events, departures)),
    }
}

/// An element name fit for an error: printable, at most 60 characters.
fn shown_name(name: &str) -> String {
    let mut shown: String = name.chars().filter(|c| !c.is_control()).take(60).collect();
    if name.chars().count() > 60 {
        shown.push('…');
    }
    shown
}
