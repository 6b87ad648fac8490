//! A document as libxml2 read it ([`Events`]: elements, attributes and text, recorded from its SAX
//! callbacks in the same pass that checks well-formedness and, for the export's documents,
//! validates against NHN's XSD), and a pull [`Cursor`] over it that the model parsers walk like a
//! tree: `next_child` until `None`, `text` for leaves, `skip` for what is not modelled.
//!
//! One pass over the bytes: libxml2's. The depth and element-count bounds are counted while
//! recording; past either, nothing more is kept and the document is refused. Nothing here copies
//! text into an error.

use std::ops::Range;

use super::{XmlError, XmlLimits};

/// An element the cursor stopped at: its local name, whether it is in the document's namespace
/// (the root's), and its attributes by local name (namespace declarations left out).
#[derive(Debug)]
pub(crate) struct Element {
    pub name: String,
    pub in_namespace: bool,
    pub attributes: Vec<(String, String)>,
}

impl Element {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// `xsi:nil="true"`.
    pub(super) fn is_nil(&self) -> bool {
        matches!(self.attribute("nil"), Some("true" | "1"))
    }
}

/// Where a name, value or text is in [`Events::text`].
type Span = Range<usize>;

#[derive(Debug)]
enum Item {
    Start {
        name: Span,
        in_namespace: bool,
        /// Its attributes in [`Events::attributes`].
        attributes: Range<usize>,
    },
    End,
    Text(Span),
}

/// A document's elements, attributes and character data in document order, as libxml2's SAX
/// callbacks delivered them (entities and character references already replaced). Comments and
/// processing instructions are not kept.
#[derive(Debug)]
pub(crate) struct Events {
    /// Every name, attribute value and text, one after the other.
    text: String,
    items: Vec<Item>,
    attributes: Vec<(Span, Span)>,
    /// The root element's namespace (empty when it has none).
    namespace: Vec<u8>,
    max_depth: usize,
    max_elements: usize,
    elements: usize,
    depth: usize,
    /// A bound was passed, or libxml2 handed over something that is not UTF-8: nothing more is
    /// recorded, and the document is refused.
    refused: Option<XmlError>,
}

impl Events {
    pub(crate) fn new(limits: &XmlLimits) -> Self {
        Self {
            text: String::new(),
            items: Vec::new(),
            attributes: Vec::new(),
            namespace: Vec::new(),
            max_depth: limits.max_depth,
            max_elements: limits.max_elements,
            elements: 0,
            depth: 0,
            refused: None,
        }
    }

    /// Forgets what was recorded, to record the same document again.
    pub(crate) fn clear(&mut self) {
        self.text.clear();
        self.items.clear();
        self.attributes.clear();
        self.namespace.clear();
        self.elements = 0;
        self.depth = 0;
        self.refused = None;
    }

    /// Why the document is refused whatever libxml2 says of it, if it is.
    pub(crate) fn take_refusal(&mut self) -> Option<XmlError> {
        self.refused.take()
    }

    fn push_text(&mut self, bytes: &[u8]) -> Option<Span> {
        let Ok(text) = std::str::from_utf8(bytes) else {
            self.refused = Some(XmlError::NotUtf8);
            return None;
        };
        let start = self.text.len();
        self.text.push_str(text);
        Some(start..self.text.len())
    }

    /// An element's start: its local name, its namespace (`None`: none) and its attributes as
    /// (local name, value). libxml2 keeps a `&` that came from `&amp;` or `&#38;` in an
    /// attribute value as `&#38;` when it does not replace entities; it is replaced here.
    pub(crate) fn start<'b>(
        &mut self,
        local_name: &[u8],
        namespace: Option<&[u8]>,
        attributes: impl Iterator<Item = (&'b [u8], &'b [u8])>,
    ) {
        if self.refused.is_some() {
            return;
        }
        self.depth += 1;
        self.elements += 1;
        if self.depth > self.max_depth {
            self.refused = Some(XmlError::TooDeep {
                limit: self.max_depth,
            });
            return;
        }
        if self.elements > self.max_elements {
            self.refused = Some(XmlError::TooManyElements {
                limit: self.max_elements,
            });
            return;
        }
        let namespace = namespace.unwrap_or_default();
        let in_namespace = if self.items.is_empty() {
            self.namespace = namespace.to_vec();
            true
        } else {
            namespace == self.namespace.as_slice()
        };
        let Some(name) = self.push_text(local_name) else {
            return;
        };
        let first = self.attributes.len();
        for (key, value) in attributes {
            let Some(key) = self.push_text(key) else {
                return;
            };
            let value = if value.windows(5).any(|w| w == b"&#38;") {
                let Ok(value) = std::str::from_utf8(value) else {
                    self.refused = Some(XmlError::NotUtf8);
                    return;
                };
                let start = self.text.len();
                self.text.push_str(&value.replace("&#38;", "&"));
                start..self.text.len()
            } else {
                let Some(value) = self.push_text(value) else {
                    return;
                };
                value
            };
            self.attributes.push((key, value));
        }
        self.items.push(Item::Start {
            name,
            in_namespace,
            attributes: first..self.attributes.len(),
        });
    }

    pub(crate) fn end(&mut self) {
        if self.refused.is_some() {
            return;
        }
        self.depth = self.depth.saturating_sub(1);
        self.items.push(Item::End);
    }

    /// Character data, CDATA included; consecutive pieces become one text.
    pub(crate) fn characters(&mut self, bytes: &[u8]) {
        if self.refused.is_some() {
            return;
        }
        let Some(span) = self.push_text(bytes) else {
            return;
        };
        if let Some(Item::Text(last)) = self.items.last_mut()
            && last.end == span.start
        {
            last.end = span.end;
            return;
        }
        self.items.push(Item::Text(span));
    }
}

pub(crate) struct Cursor<'a> {
    events: &'a Events,
    /// The next item to read.
    next: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(events: &'a Events) -> Self {
        Self { events, next: 0 }
    }

    /// The root element's namespace (empty when it has none).
    pub fn namespace(&self) -> &[u8] {
        &self.events.namespace
    }

    fn read(&mut self) -> Result<&'a Item, XmlError> {
        let item = self.events.items.get(self.next).ok_or_else(ended_inside)?;
        self.next += 1;
        Ok(item)
    }

    fn element(&self, name: &Span, in_namespace: bool, attributes: &Range<usize>) -> Element {
        let text = &self.events.text;
        Element {
            name: text[name.clone()].to_owned(),
            in_namespace,
            attributes: self.events.attributes[attributes.clone()]
                .iter()
                .map(|(key, value)| (text[key.clone()].to_owned(), text[value.clone()].to_owned()))
                .collect(),
        }
    }

    /// Enters the root element.
    pub fn root(&mut self) -> Result<Element, XmlError> {
        loop {
            match self.events.items.get(self.next) {
                None => return Err(XmlError::NoRoot),
                Some(Item::Start {
                    name,
                    in_namespace,
                    attributes,
                }) => {
                    self.next += 1;
                    return Ok(self.element(name, *in_namespace, attributes));
                }
                Some(_) => self.next += 1,
            }
        }
    }

    /// The next child of the current element (which it enters), or `None` at the current
    /// element's end (which it leaves).
    pub fn next_child(&mut self) -> Result<Option<Element>, XmlError> {
        loop {
            match self.read()? {
                Item::Start {
                    name,
                    in_namespace,
                    attributes,
                } => return Ok(Some(self.element(name, *in_namespace, attributes))),
                Item::End => return Ok(None),
                Item::Text(_) => {}
            }
        }
    }

    /// The text of the current element (a leaf), which it leaves. Child elements are skipped (the
    /// XSD check reports them).
    pub fn text(&mut self) -> Result<String, XmlError> {
        let mut content = String::new();
        loop {
            match self.read()? {
                Item::Text(span) => content.push_str(&self.events.text[span.clone()]),
                Item::Start { .. } => self.skip()?,
                Item::End => return Ok(content),
            }
        }
    }

    /// Skips the rest of the current element with everything inside it.
    pub fn skip(&mut self) -> Result<(), XmlError> {
        let mut depth = 0usize;
        loop {
            match self.read()? {
                Item::Start { .. } => depth += 1,
                Item::End if depth == 0 => return Ok(()),
                Item::End => depth -= 1,
                Item::Text(_) => {}
            }
        }
    }
}

/// A recording cut short: never after a parse libxml2 finished without error.
fn ended_inside() -> XmlError {
    XmlError::Malformed {
        position: 0,
        reason: "the document ends inside an element".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::values::{parse_date, parse_date_time};
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn dates_and_times_parse_with_and_without_zones() {
        assert_eq!(
            parse_date("2005-01-09"),
            NaiveDate::from_ymd_opt(2005, 1, 9)
        );
        assert_eq!(
            parse_date("2005-01-09+01:00"),
            NaiveDate::from_ymd_opt(2005, 1, 9)
        );
        assert_eq!(parse_date("09.01.2005"), None);
        let time = parse_date_time("2021-01-29T08:29:29.697").unwrap();
        assert_eq!(time.to_string(), "2021-01-29 08:29:29.697");
        assert_eq!(
            parse_date_time("2021-03-25T08:00:40.6548181+01:00")
                .unwrap()
                .to_string(),
            "2021-03-25 08:00:40.654818100"
        );
        assert!(parse_date_time("2021-01-29T08:29:29").is_some());
        assert!(parse_date_time("2021-01-29").is_none());
    }

    #[test]
    fn prolog_scan_stops_at_the_root() {
        use super::super::prolog::check_prolog;
        assert!(check_prolog(b"\xEF\xBB\xBF<?xml version=\"1.0\"?><!-- c --><a/>").is_ok());
        assert!(check_prolog(b"<?xml version='1.0' encoding='UTF-8'?><a/>").is_ok());
        assert!(matches!(
            check_prolog(b"<?xml version=\"1.0encoding='utf-8'\"\n encoding=\"latin1\"?><a/>"),
            Err(XmlError::UnsupportedEncoding(e)) if e == "latin1"
        ));
        assert!(matches!(
            check_prolog(b"<?xml version=\"1.0\" encoding = \"windows-1252\"?><a/>"),
            Err(XmlError::UnsupportedEncoding(e)) if e == "windows-1252"
        ));
        assert!(matches!(
            check_prolog(b"<?xml version=\"1.0\"?>\n<!DOCTYPE a [<!ENTITY x \"y\">]><a/>"),
            Err(XmlError::Doctype)
        ));
        assert!(matches!(
            check_prolog(b"<!-- <a> --><!doctype a><a/>"),
            Err(XmlError::Doctype)
        ));
        assert!(matches!(
            check_prolog(b"\xFF\xFE<\0a\0/\0>\0"),
            Err(XmlError::UnsupportedEncoding(_))
        ));
    }

    #[test]
    fn the_cursor_walks_what_was_recorded() {
        let mut events = Events::new(&XmlLimits::default());
        events.start(b"root", Some(b"urn:a"), std::iter::empty());
        events.characters(b"\n ");
        events.start(
            b"leaf",
            Some(b"urn:a"),
            [(&b"V"[..], &b"x&#38;y"[..])].into_iter(),
        );
        events.characters(b"one ");
        events.characters(b"two");
        events.end();
        events.start(b"other", None, std::iter::empty());
        events.start(b"inner", Some(b"urn:a"), std::iter::empty());
        events.end();
        events.end();
        events.end();
        let mut cursor = Cursor::new(&events);
        let root = cursor.root().unwrap();
        assert_eq!((root.name.as_str(), root.in_namespace), ("root", true));
        assert_eq!(cursor.namespace(), b"urn:a");
        let leaf = cursor.next_child().unwrap().unwrap();
        assert_eq!(leaf.attribute("V"), Some("x&y"));
        assert_eq!(cursor.text().unwrap(), "one two");
        let other = cursor.next_child().unwrap().unwrap();
        assert!(!other.in_namespace);
        cursor.skip().unwrap();
        assert!(cursor.next_child().unwrap().is_none());
        assert!(cursor.next_child().is_err(), "nothing after the root's end");
    }

    #[test]
    fn recording_stops_at_the_bounds() {
        let limits = XmlLimits {
            max_depth: 2,
            ..XmlLimits::default()
        };
        let mut events = Events::new(&limits);
        for _ in 0..3 {
            events.start(b"a", None, std::iter::empty());
        }
        assert!(matches!(
            events.take_refusal(),
            Some(XmlError::TooDeep { limit: 2 })
        ));
    }
}
