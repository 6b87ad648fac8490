//! NHN's XSD (`FmSfmExportImportFormatDefinition.xsd`, kept beside this file byte for byte as NHN
//! publishes it) applied by libxml2, the validator `xmllint --schema` runs, so that our verdict on a
//! document is libxml2's and not a hand-copied subset of the schema.
//!
//! The schema is compiled once per process; every thread that validates keeps its own parser and
//! validation context (libxml2 contexts are single-threaded, a compiled schema is read-only and may
//! be shared). Validation is CPU work, about a millisecond per 100 KB: callers run a large document
//! on a blocking thread (`api::ingest` checks a patient-sized file on its task). It must only ever see
//! documents that passed [`super::check_prolog`] (no DOCTYPE, so no DTD and no entity declaration):
//! the parse here loads nothing from the network, and substitutes no entities. Its work is linear
//! in the document: the stream keeps no tree, libxml2's own bounds (256 levels, 10 MB per text
//! without `XML_PARSE_HUGE`) hold, and the recording ([`super::cursor::Events`]) stops keeping
//! anything past the depth and element bounds, which then refuse the document.
//!
//! The same pass records the document for the model parsers through SAX callbacks: libxml2 hands
//! them every element and text after its own validation handlers have seen them.
//!
//! Reports never carry document content: libxml2 quotes values in its messages ("'three' is not a
//! valid value of the atomic type 'xs:int'"), so every quoted value is replaced by `'…'` and long
//! digit runs by `…` before a message leaves this module; element and attribute names are kept.
//!
//! The `unsafe` of the whole crate's XML handling is here: a dozen libxml2 functions declared by
//! hand (the schema API of libxml2 2.9 and later, whose ABI is stable), each call commented.

use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

use super::XmlError;
use super::cursor::Events;
use crate::model::Deviation;

/// NHN's schema, as published (pinned by SHA-256 in `hack/nhn-reference.sh`; a test compares).
pub const SCHEMA: &[u8] = include_bytes!("FmSfmExportImportFormatDefinition.xsd");

/// What libxml2 found wrong with one document.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Not well-formed: the document is refused whatever the policy.
    Malformed {
        /// The line libxml2 stopped at.
        line: u32,
        /// Its reason, with document content removed.
        reason: String,
    },
    /// Well-formed; every departure from the XSD (empty when it validates), at most
    /// `max_departures` of them and then one counting the rest.
    Departures(Vec<Deviation>),
}

/// Parses `document` with libxml2 and validates it against NHN's XSD.
pub(crate) fn validate(document: &[u8], max_departures: usize) -> Result<Verdict, XmlError> {
    with_validator(document, |validator, length| {
        validator.run(document, length, Some(max_departures), None)
    })
}

/// Parses `document` with libxml2, validates it against NHN's XSD and records it into `events`
/// (complete unless the verdict is `Malformed` or `events` refuses it), all in one pass when the
/// document is clean.
pub(crate) fn validate_and_record(
    document: &[u8],
    max_departures: usize,
    events: &mut Events,
) -> Result<Verdict, XmlError> {
    with_validator(document, |validator, length| {
        validator.run(document, length, Some(max_departures), Some(events))
    })
}

/// Parses `document` with libxml2 only, recording it into `events`: a document NHN's XSD does not
/// cover (the KITH messages) is still refused when libxml2 finds it not well-formed. `Departures`
/// is then always empty.
pub(crate) fn record_well_formed(
    document: &[u8],
    events: &mut Events,
) -> Result<Verdict, XmlError> {
    with_validator(document, |validator, length| {
        validator.run(document, length, None, Some(events))
    })
}

fn with_validator(
    document: &[u8],
    run: impl FnOnce(&mut Validator, c_int) -> Verdict,
) -> Result<Verdict, XmlError> {
    let schema = compiled_schema()?;
    let length = c_int::try_from(document.len()).map_err(|_| XmlError::TooLarge)?;
    THREAD_VALIDATOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Validator::new(schema)?);
        }
        let validator = slot.as_mut().expect("created above");
        Ok(run(validator, length))
    })
}

// ---- libxml2's C API, the part used here ----

/// `xmlError` (libxml2 `xmlerror.h`), unchanged from 2.9 to 2.14.
#[repr(C)]
struct RawError {
    domain: c_int,
    code: c_int,
    message: *const c_char,
    level: c_int,
    file: *const c_char,
    line: c_int,
    str1: *const c_char,
    str2: *const c_char,
    str3: *const c_char,
    int1: c_int,
    int2: c_int,
    ctxt: *mut c_void,
    node: *mut c_void,
}

/// The leading fields shared by `xmlNode` and `xmlAttr` (libxml2 `tree.h`).
#[repr(C)]
struct RawNode {
    private: *mut c_void,
    kind: c_int,
    name: *const c_char,
    children: *mut RawNode,
    last: *mut RawNode,
    parent: *mut RawNode,
    next: *mut RawNode,
    prev: *mut RawNode,
}

const XML_ELEMENT_NODE: c_int = 1;
const XML_ATTRIBUTE_NODE: c_int = 2;
/// `XML_ERR_ERROR`: errors and fatal errors; warnings are below.
const XML_ERR_ERROR: c_int = 2;
/// Warnings kept while parsing (only the first error decides; the rest is bounded memory).
const PARSE_MESSAGES_KEPT: usize = 100;
/// `XML_PARSE_NOERROR | XML_PARSE_NOWARNING | XML_PARSE_NONET`: no output of its own, no network.
/// Deliberately without `XML_PARSE_NOENT`, `XML_PARSE_DTDLOAD` and `XML_PARSE_HUGE`.
const PARSE_OPTIONS: c_int = (1 << 5) | (1 << 6) | (1 << 11);

type StructuredErrorHandler = unsafe extern "C" fn(user_data: *mut c_void, error: *const RawError);

#[link(name = "xml2")]
unsafe extern "C" {
    fn xmlInitParser();
    fn xmlSetStructuredErrorFunc(context: *mut c_void, handler: Option<StructuredErrorHandler>);
    fn xmlNewParserCtxt() -> *mut c_void;
    fn xmlFreeParserCtxt(context: *mut c_void);
    fn xmlCtxtReadMemory(
        context: *mut c_void,
        buffer: *const c_char,
        size: c_int,
        url: *const c_char,
        encoding: *const c_char,
        options: c_int,
    ) -> *mut c_void;
    fn xmlFreeDoc(document: *mut c_void);
    fn xmlSchemaNewMemParserCtxt(buffer: *const c_char, size: c_int) -> *mut c_void;
    fn xmlSchemaSetParserStructuredErrors(
        context: *mut c_void,
        handler: Option<StructuredErrorHandler>,
        user_data: *mut c_void,
    );
    fn xmlSchemaParse(context: *mut c_void) -> *mut c_void;
    fn xmlSchemaFreeParserCtxt(context: *mut c_void);
    fn xmlSchemaNewValidCtxt(schema: *mut c_void) -> *mut c_void;
    fn xmlSchemaFreeValidCtxt(context: *mut c_void);
    fn xmlSchemaSetValidStructuredErrors(
        context: *mut c_void,
        handler: Option<StructuredErrorHandler>,
        user_data: *mut c_void,
    );
    fn xmlSchemaValidateDoc(context: *mut c_void, document: *mut c_void) -> c_int;
    fn xmlParserInputBufferCreateMem(
        buffer: *const c_char,
        size: c_int,
        encoding: c_int,
    ) -> *mut c_void;
    fn xmlSchemaValidateStream(
        context: *mut c_void,
        input: *mut c_void,
        encoding: c_int,
        sax: *mut c_void,
        user_data: *mut c_void,
    ) -> c_int;
    fn xmlSAXUserParseMemory(
        sax: *mut SaxHandler,
        user_data: *mut c_void,
        buffer: *const c_char,
        size: c_int,
    ) -> c_int;
}

/// `xmlSAXHandler` (libxml2 `parser.h`, unchanged from 2.9 to 2.14): 27 SAX1 callbacks, the
/// `initialized` magic, then the SAX2 part. With the SAX2 magic, a namespace-aware parse that
/// checks well-formedness and builds nothing; the callbacks set are the recording's.
#[repr(C)]
struct SaxHandler {
    sax1: [*const c_void; 27],
    initialized: std::ffi::c_uint,
    private: *mut c_void,
    start_element_ns: *const c_void,
    end_element_ns: *const c_void,
    serror: *const c_void,
}

/// Positions in `SaxHandler::sax1` (the order of `parser.h`).
const SAX_CHARACTERS: usize = 17;
const SAX_IGNORABLE_WHITESPACE: usize = 18;
const SAX_CDATA_BLOCK: usize = 25;

impl SaxHandler {
    /// No callback: a parse that only checks.
    fn checking() -> Self {
        Self {
            sax1: [ptr::null(); 27],
            initialized: SAX2_MAGIC,
            private: ptr::null_mut(),
            start_element_ns: ptr::null(),
            end_element_ns: ptr::null(),
            serror: ptr::null(),
        }
    }

    /// Elements, attributes and character data into the [`Events`] given as user data.
    fn recording() -> Self {
        let mut handler = Self::checking();
        let characters: CharactersCallback = record_characters;
        handler.sax1[SAX_CHARACTERS] = characters as *const c_void;
        handler.sax1[SAX_IGNORABLE_WHITESPACE] = characters as *const c_void;
        handler.sax1[SAX_CDATA_BLOCK] = characters as *const c_void;
        let start: StartElementCallback = record_start;
        let end: EndElementCallback = record_end;
        handler.start_element_ns = start as *const c_void;
        handler.end_element_ns = end as *const c_void;
        handler
    }
}

/// `startElementNsSAX2Func`.
type StartElementCallback = unsafe extern "C" fn(
    user_data: *mut c_void,
    local_name: *const u8,
    prefix: *const u8,
    namespace: *const u8,
    namespace_count: c_int,
    namespaces: *const *const u8,
    attribute_count: c_int,
    defaulted_count: c_int,
    attributes: *const *const u8,
);
/// `endElementNsSAX2Func`.
type EndElementCallback = unsafe extern "C" fn(
    user_data: *mut c_void,
    local_name: *const u8,
    prefix: *const u8,
    namespace: *const u8,
);
/// `charactersSAXFunc`, `ignorableWhitespaceSAXFunc` and `cdataBlockSAXFunc` alike.
type CharactersCallback =
    unsafe extern "C" fn(user_data: *mut c_void, text: *const u8, length: c_int);

/// A NUL-terminated libxml2 string, without its NUL.
///
/// # Safety
/// `text` is non-null and NUL-terminated, alive for `'b`.
unsafe fn c_bytes<'b>(text: *const u8) -> &'b [u8] {
    // SAFETY: the caller's.
    unsafe { CStr::from_ptr(text.cast()) }.to_bytes()
}

/// Records an element's start. Never unwinds (nothing here panics on any input).
unsafe extern "C" fn record_start(
    user_data: *mut c_void,
    local_name: *const u8,
    _prefix: *const u8,
    namespace: *const u8,
    _namespace_count: c_int,
    _namespaces: *const *const u8,
    attribute_count: c_int,
    _defaulted_count: c_int,
    attributes: *const *const u8,
) {
    if user_data.is_null() || local_name.is_null() {
        return;
    }
    let count = if attributes.is_null() {
        0
    } else {
        usize::try_from(attribute_count).unwrap_or(0)
    };
    // SAFETY: user data is the `Events` the parse was started with (`Validator::run`), alive and
    // not otherwise borrowed during the parse. libxml2 passes NUL-terminated names (the namespace
    // null when there is none) and, per attribute, five pointers: local name, prefix, namespace,
    // and the value's first byte and the byte after it; all alive during the call.
    unsafe {
        let events = &mut *user_data.cast::<Events>();
        let namespace = (!namespace.is_null()).then(|| c_bytes(namespace));
        let attributes = (0..count).filter_map(|i| {
            let attribute = attributes.add(i * 5);
            let (name, value, end) = (*attribute, *attribute.add(3), *attribute.add(4));
            if name.is_null() || value.is_null() || end.is_null() {
                return None;
            }
            let length = usize::try_from(end.offset_from(value)).ok()?;
            Some((c_bytes(name), std::slice::from_raw_parts(value, length)))
        });
        events.start(c_bytes(local_name), namespace, attributes);
    }
}

/// Records an element's end.
unsafe extern "C" fn record_end(
    user_data: *mut c_void,
    _local_name: *const u8,
    _prefix: *const u8,
    _namespace: *const u8,
) {
    if user_data.is_null() {
        return;
    }
    // SAFETY: as in `record_start`.
    unsafe { (*user_data.cast::<Events>()).end() };
}

/// Records character data (entities and character references replaced by libxml2) and CDATA.
unsafe extern "C" fn record_characters(user_data: *mut c_void, text: *const u8, length: c_int) {
    let Ok(length) = usize::try_from(length) else {
        return;
    };
    if user_data.is_null() || text.is_null() {
        return;
    }
    // SAFETY: as in `record_start`; `text` holds `length` bytes during the call.
    unsafe {
        let text = std::slice::from_raw_parts(text, length);
        (*user_data.cast::<Events>()).characters(text);
    }
}

/// `XML_SAX2_MAGIC`.
const SAX2_MAGIC: std::ffi::c_uint = 0xDEED_BEAF;
/// `XML_CHAR_ENCODING_NONE`: detect it, as `xmlCtxtReadMemory` does without an encoding.
const ENCODING_NONE: c_int = 0;

// ---- the compiled schema, once per process ----

/// A compiled `xmlSchema`. libxml2 never changes a compiled schema while validating, and documents
/// sharing one between validation contexts on several threads, so it may be sent and shared.
struct CompiledSchema(*mut c_void);

// SAFETY: see the type's comment; the pointer is never freed (it lives as long as the process).
unsafe impl Send for CompiledSchema {}
// SAFETY: as above, only read after compilation.
unsafe impl Sync for CompiledSchema {}

/// Compiles the schema unless done already.
pub(crate) fn compile_once() -> Result<(), XmlError> {
    compiled_schema().map(|_| ())
}

fn compiled_schema() -> Result<&'static CompiledSchema, XmlError> {
    static SCHEMA_ONCE: OnceLock<Result<CompiledSchema, String>> = OnceLock::new();
    SCHEMA_ONCE
        .get_or_init(compile)
        .as_ref()
        .map_err(|reason| XmlError::SchemaUnavailable(reason.clone()))
}

fn compile() -> Result<CompiledSchema, String> {
    let mut errors = Collector::new(usize::MAX);
    // SAFETY: xmlInitParser is idempotent; the OnceLock runs this once before any other call here.
    // The parser context reads SCHEMA (static, length checked) and reports into `errors`, which
    // outlives it; the context is freed before return, the compiled schema is kept.
    unsafe {
        xmlInitParser();
        let length = c_int::try_from(SCHEMA.len()).map_err(|_| "the XSD is too large")?;
        let context = xmlSchemaNewMemParserCtxt(SCHEMA.as_ptr().cast(), length);
        if context.is_null() {
            return Err("libxml2 could not create a schema parser".into());
        }
        xmlSchemaSetParserStructuredErrors(context, Some(collect), errors.as_user_data());
        let schema = xmlSchemaParse(context);
        xmlSchemaFreeParserCtxt(context);
        if schema.is_null() {
            let first = errors.found.first().map(|e| e.reason.clone());
            return Err(format!(
                "libxml2 could not compile NHN's XSD: {}",
                first.unwrap_or_default()
            ));
        }
        Ok(CompiledSchema(schema))
    }
}

// ---- one parser and one validation context per thread ----

thread_local! {
    static THREAD_VALIDATOR: RefCell<Option<Validator>> = const { RefCell::new(None) };
}

struct Validator {
    parser: *mut c_void,
    /// The tree validation's context. Never used for a streaming validation: libxml2 2.9 leaves
    /// a context that streamed marked as streaming, and its next tree validation then reads the
    /// freed parser of the stream when it reports (a crash seen in the tests).
    validation: *mut c_void,
    schema: *mut c_void,
    /// Boxed so that its address, given to libxml2 as user data, never moves.
    errors: Box<Collector>,
}

impl Validator {
    fn new(schema: &CompiledSchema) -> Result<Self, XmlError> {
        let mut errors = Box::new(Collector::new(0));
        // SAFETY: both contexts are created here and freed in Drop; the handlers' user data is
        // the boxed collector, freed after them. The thread's structured handler only replaces
        // libxml2's default printing to stderr for this thread.
        unsafe {
            xmlSetStructuredErrorFunc(errors.as_user_data(), Some(collect));
            let parser = xmlNewParserCtxt();
            let validation = xmlSchemaNewValidCtxt(schema.0);
            if parser.is_null() || validation.is_null() {
                if !parser.is_null() {
                    xmlFreeParserCtxt(parser);
                }
                if !validation.is_null() {
                    xmlSchemaFreeValidCtxt(validation);
                }
                return Err(XmlError::SchemaUnavailable(
                    "libxml2 could not create a validation context".into(),
                ));
            }
            xmlSchemaSetValidStructuredErrors(validation, Some(collect), errors.as_user_data());
            Ok(Self {
                parser,
                validation,
                schema: schema.0,
                errors,
            })
        }
    }

    /// Parses, then validates unless `max_departures` is `None`.
    ///
    /// First without a tree (a streaming validation, or a bare SAX parse for well-formedness), which
    /// costs about half of building, walking and freeing a tree: when libxml2 reports nothing
    /// there, the document is well-formed and valid and the verdict is the tree's. Any report at all
    /// goes the tree way, which names element paths (a stream has no nodes to name).
    ///
    /// With `events`, the pass without a tree records the document too. When libxml2 reported
    /// anything there, the document is recorded again by a parse that does not validate: the
    /// recording of a stream that reported may have stopped short.
    fn run(
        &mut self,
        document: &[u8],
        length: c_int,
        max_departures: Option<usize>,
        mut events: Option<&mut Events>,
    ) -> Verdict {
        let validate = max_departures.is_some();
        if self.clean_without_tree(document, length, validate, events.as_deref_mut()) {
            return Verdict::Departures(Vec::new());
        }
        let verdict = self.run_on_tree(document, length, max_departures);
        if let (Verdict::Departures(_), Some(events)) = (&verdict, events) {
            events.clear();
            self.clean_without_tree(document, length, false, Some(events));
        }
        verdict
    }

    /// Whether libxml2 parses (and with `validate`, validates against the schema) the document
    /// without reporting anything: no error, no warning. With `events`, records it there.
    fn clean_without_tree(
        &mut self,
        document: &[u8],
        length: c_int,
        validate: bool,
        events: Option<&mut Events>,
    ) -> bool {
        let (mut sax, user_data) = match events {
            Some(events) => (
                SaxHandler::recording(),
                ptr::from_mut(events).cast::<c_void>(),
            ),
            None => (SaxHandler::checking(), ptr::null_mut()),
        };
        // A limit of 0: every report is only counted (no message kept, no node read).
        self.errors.reset(0);
        let status = if validate {
            // SAFETY: a validation context of its own for this one stream (see `validation`),
            // freed right after; it reports into the collector, and parse errors go to the
            // thread's structured handler, the same collector, which reads no node at a limit of
            // 0. The buffer is copied by libxml2 into the input it creates; the validation takes
            // that input over and frees it with its parser context. The SAX handler (libxml2
            // calls it after its own validation handlers) and its user data, null or the caller's
            // `Events`, outlive the call.
            unsafe {
                let validation = xmlSchemaNewValidCtxt(self.schema);
                if validation.is_null() {
                    -1
                } else {
                    xmlSchemaSetValidStructuredErrors(
                        validation,
                        Some(collect),
                        self.errors.as_user_data(),
                    );
                    let input = xmlParserInputBufferCreateMem(
                        document.as_ptr().cast(),
                        length,
                        ENCODING_NONE,
                    );
                    let status = if input.is_null() {
                        -1
                    } else {
                        xmlSchemaValidateStream(
                            validation,
                            input,
                            ENCODING_NONE,
                            ptr::from_mut(&mut sax).cast(),
                            user_data,
                        )
                    };
                    xmlSchemaFreeValidCtxt(validation);
                    status
                }
            }
        } else {
            // SAFETY: the handler and its user data (null or the caller's `Events`) live across
            // the call; libxml2 reads the caller's buffer of `length` bytes and reports into the
            // thread's structured handler.
            unsafe { xmlSAXUserParseMemory(&mut sax, user_data, document.as_ptr().cast(), length) }
        };
        let clean = status == 0
            && self.errors.found.is_empty()
            && self.errors.dropped == 0
            && self.errors.first_error.is_none();
        self.errors.reset(0);
        clean
    }

    /// The parse into a tree, then the validation of the tree unless `max_departures` is `None`.
    fn run_on_tree(
        &mut self,
        document: &[u8],
        length: c_int,
        max_departures: Option<usize>,
    ) -> Verdict {
        self.errors.reset(PARSE_MESSAGES_KEPT);
        // SAFETY: the buffer and its length are the caller's slice; the document tree lives until
        // xmlFreeDoc below, and the handler reads node pointers only while it is alive.
        let tree = unsafe {
            xmlCtxtReadMemory(
                self.parser,
                document.as_ptr().cast(),
                length,
                ptr::null(),
                ptr::null(),
                PARSE_OPTIONS,
            )
        };
        let failed = self.errors.first_error.take();
        if tree.is_null() || failed.is_some() {
            let (line, reason) = failed.unwrap_or((0, "libxml2 built no document".into()));
            if !tree.is_null() {
                // SAFETY: built by xmlCtxtReadMemory above and not used after.
                unsafe { xmlFreeDoc(tree) };
            }
            return Verdict::Malformed { line, reason };
        }
        let Some(max_departures) = max_departures else {
            // SAFETY: built by xmlCtxtReadMemory above and not used after.
            unsafe { xmlFreeDoc(tree) };
            return Verdict::Departures(Vec::new());
        };
        self.errors.reset(max_departures);
        // SAFETY: a valid context and the tree built above; freed right after.
        let status = unsafe {
            let status = xmlSchemaValidateDoc(self.validation, tree);
            xmlFreeDoc(tree);
            status
        };
        let mut departures: Vec<Deviation> = self
            .errors
            .found
            .drain(..)
            .map(|e| Deviation {
                path: e.path,
                message: e.reason,
            })
            .collect();
        if self.errors.dropped > 0 {
            departures.push(Deviation {
                path: "/".into(),
                message: format!(
                    "{} further deviations were not recorded",
                    self.errors.dropped
                ),
            });
        }
        if status != 0 && departures.is_empty() {
            departures.push(Deviation {
                path: "/".into(),
                message: format!("libxml2 found the document invalid (status {status})"),
            });
        }
        Verdict::Departures(departures)
    }
}

impl Drop for Validator {
    fn drop(&mut self) {
        // SAFETY: created in `new`, freed once; the thread's handler is cleared first because it
        // points at the collector about to be dropped.
        unsafe {
            xmlSetStructuredErrorFunc(ptr::null_mut(), None);
            xmlSchemaFreeValidCtxt(self.validation);
            xmlFreeParserCtxt(self.parser);
        }
    }
}

// ---- what libxml2 reports, collected ----

struct Found {
    path: String,
    reason: String,
}

struct Collector {
    found: Vec<Found>,
    limit: usize,
    dropped: usize,

    /// The first error (not warning), kept even beyond `limit`: what makes a parse fail.
    first_error: Option<(u32, String)>,
}

impl Collector {
    fn new(limit: usize) -> Self {
        Self {
            found: Vec::new(),
            limit,
            dropped: 0,
            first_error: None,
        }
    }

    fn reset(&mut self, limit: usize) {
        self.found.clear();
        self.limit = limit;
        self.dropped = 0;
        self.first_error = None;
    }

    fn as_user_data(&mut self) -> *mut c_void {
        ptr::from_mut(self).cast()
    }
}

/// libxml2's structured error handler: copies what it needs (path, level, line, a cleaned
/// message) while the tree is alive. Never unwinds (nothing here panics on any input).
unsafe extern "C" fn collect(user_data: *mut c_void, error: *const RawError) {
    if user_data.is_null() || error.is_null() {
        return;
    }
    // SAFETY: user data is always a live `Collector` (see Validator and compile); libxml2 passes a
    // valid error whose strings are NUL-terminated or null, and whose node is in the live tree.
    let (collector, error) = unsafe { (&mut *user_data.cast::<Collector>(), &*error) };
    let is_error = error.level >= XML_ERR_ERROR;
    let full = collector.found.len() >= collector.limit;
    if full {
        collector.dropped += 1;
    }
    if full && (!is_error || collector.first_error.is_some()) {
        return;
    }
    let message = if error.message.is_null() {
        String::new()
    } else {
        // SAFETY: NUL-terminated by libxml2.
        unsafe { CStr::from_ptr(error.message) }
            .to_string_lossy()
            .into_owned()
    };
    let line = u32::try_from(error.line).unwrap_or(0);
    let reason = clean_message(&message);
    if is_error && collector.first_error.is_none() {
        collector.first_error = Some((line, reason.clone()));
    }
    if full {
        return;
    }
    // SAFETY: as above.
    let path = unsafe { node_path(error.node.cast()) };
    collector.found.push(Found { path, reason });
}

/// `PasientExport/Behandlinger/Legemiddelbehandling[2]/Prescription/@V`: local names from the root
/// down, a position where siblings share a name. libxml2's own `xmlGetNodePath` writes `*` for
/// elements in a default namespace, which every export uses.
///
/// # Safety
/// `node` is null or a node of a live tree.
unsafe fn node_path(node: *const RawNode) -> String {
    let mut segments = Vec::new();
    let mut current = node;
    // SAFETY: the caller's; parents and siblings of a live node are live nodes or null.
    unsafe {
        while !current.is_null() {
            let node = &*current;
            match node.kind {
                XML_ELEMENT_NODE => {
                    let name = c_name(node.name);
                    let (mut before, mut after) = (0, 0);
                    let mut sibling = node.prev;
                    while !sibling.is_null() {
                        if same_element(&*sibling, node.name) {
                            before += 1;
                        }
                        sibling = (*sibling).prev;
                    }
                    sibling = node.next;
                    while !sibling.is_null() && after == 0 {
                        if same_element(&*sibling, node.name) {
                            after += 1;
                        }
                        sibling = (*sibling).next;
                    }
                    segments.push(if before + after > 0 {
                        format!("{name}[{}]", before + 1)
                    } else {
                        name
                    });
                }
                XML_ATTRIBUTE_NODE => segments.push(format!("@{}", c_name(node.name))),
                _ => break,
            }
            current = node.parent;
        }
    }
    if segments.is_empty() {
        return "/".into();
    }
    segments.reverse();
    segments.join("/")
}

/// # Safety
/// `name` is null or a NUL-terminated string.
unsafe fn c_name(name: *const c_char) -> String {
    if name.is_null() {
        return String::new();
    }
    // SAFETY: the caller's.
    super::shown_name(&unsafe { CStr::from_ptr(name) }.to_string_lossy())
}

/// # Safety
/// `name` is null or a NUL-terminated string; `node.name` likewise.
unsafe fn same_element(node: &RawNode, name: *const c_char) -> bool {
    // SAFETY: the caller's.
    node.kind == XML_ELEMENT_NODE
        && !node.name.is_null()
        && !name.is_null()
        && unsafe { CStr::from_ptr(node.name) == CStr::from_ptr(name) }
}

/// libxml2's message without document content: namespaces in `{…}` dropped, the leading
/// `Element 'Name': ` dropped (the path names it), every quoted value but element, attribute,
/// type and facet names replaced by `'…'`, and runs of five or more digits replaced by `…`.
pub(crate) fn clean_message(message: &str) -> String {
    let message = message.trim();
    let mut without_namespaces = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find("{http") {
        without_namespaces.push_str(&rest[..start]);
        match rest[start..].find('}') {
            Some(end) => rest = &rest[start + end + 1..],
            None => {
                rest = "";
            }
        }
    }
    without_namespaces.push_str(rest);
    let mut text = without_namespaces.as_str();
    if let Some(after) = text.strip_prefix("Element '")
        && let Some(end) = after.find('\'')
    {
        let tail = &after[end + 1..];
        text = tail
            .strip_prefix(": ")
            .or_else(|| tail.strip_prefix(", "))
            .unwrap_or(text);
    }

    const KEPT_AFTER: [&str; 6] = [
        "Element ",
        "element ",
        "attribute ",
        "type ",
        "facet ",
        "content type is ",
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('\'') {
        let before = &rest[..open];
        out.push_str(before);
        let Some(length) = rest[open + 1..].find('\'') else {
            out.push_str("'…");
            rest = "";
            break;
        };
        let quoted = &rest[open + 1..open + 1 + length];
        let kept = KEPT_AFTER.iter().any(|k| out.ends_with(k))
            && quoted.chars().all(|c| {
                c.is_alphanumeric() || matches!(c, ':' | '_' | '-' | '.') || c.is_whitespace()
            });
        out.push('\'');
        out.push_str(if kept { quoted } else { "…" });
        out.push('\'');
        rest = &rest[open + 1 + length + 1..];
    }
    out.push_str(rest);
    mask_digit_runs(&out)
}

fn mask_digit_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut digits = String::new();
    for c in text.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if digits.len() >= 5 {
            out.push('…');
        } else {
            out.push_str(&digits);
        }
        digits.clear();
        if c != '\0' {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_names_and_lose_values() {
        assert_eq!(
            clean_message(
                "Element '{http://www.kith.no/xmlstds/eresept/forskrivningsmodul/export/2019-11-13}Reiterasjon': 'three' is not a valid value of the atomic type 'xs:int'.\n"
            ),
            "'…' is not a valid value of the atomic type 'xs:int'."
        );
        assert_eq!(
            clean_message(
                "Element '{http://x}Mengde', attribute 'V': '1,5' is not a valid value of the atomic type 'xs:decimal'."
            ),
            "attribute 'V': '…' is not a valid value of the atomic type 'xs:decimal'."
        );
        assert_eq!(
            clean_message(
                "Element '{http://x}Id': [facet 'maxLength'] The value 'Kari Nordmann' has a length of '13'; this exceeds the allowed maximum length of '11'."
            ),
            "[facet 'maxLength'] The value '…' has a length of '…'; this exceeds the allowed maximum length of '…'."
        );
        assert_eq!(
            clean_message(
                "Element '{http://x}Brukere': This element is not expected. Expected is ( {http://x}InVib )."
            ),
            "This element is not expected. Expected is ( InVib )."
        );
        assert_eq!(
            clean_message("Opening and ending tag mismatch: Id line 3 and 01019912345"),
            "Opening and ending tag mismatch: Id line 3 and …"
        );
        assert_eq!(clean_message("unterminated 'quote"), "unterminated '…");
    }
}
