//! A pull cursor over quick-xml's namespace-aware reader that the model parsers walk like a tree:
//! `next_child` until `None`, `text` for leaves, `skip` for what is not modelled.
//!
//! It is where the defences live: the prolog scan, the UTF-8 check, the depth and element-count
//! bounds (counted for skipped subtrees too). Departures from the XSD are not its business: libxml2
//! validates the whole document afterwards (`super::xsd`). It never copies text into an error.

use quick_xml::NsReader;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;

use super::prolog::check_prolog;
use super::values::shown_label;
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

pub(crate) struct Cursor<'a> {
    reader: NsReader<&'a [u8]>,
    limits: XmlLimits,
    /// The root element's namespace; children in it are "ours".
    namespace: Vec<u8>,
    elements: usize,
    /// Elements open, the root included.
    depth: usize,
    /// The element last returned was self-closing: it has no content and no end event.
    pending_empty: bool,
}

/// How an element's namespace relates to the document's.
fn in_namespace(resolved: &ResolveResult, namespace: &[u8]) -> Option<bool> {
    match resolved {
        ResolveResult::Bound(ns) => Some(ns.as_ref() == namespace),
        ResolveResult::Unbound => Some(namespace.is_empty()),
        ResolveResult::Unknown(_) => None,
    }
}

impl<'a> Cursor<'a> {
    /// Checks the prolog and the encoding, then prepares to read.
    pub fn new(bytes: &'a [u8], limits: &XmlLimits) -> Result<Self, XmlError> {
        check_prolog(bytes)?;
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let text = std::str::from_utf8(bytes).map_err(|_| XmlError::NotUtf8)?;
        let mut reader = NsReader::from_str(text);
        reader.config_mut().check_comments = true;
        Ok(Self {
            reader,
            limits: limits.clone(),
            namespace: Vec::new(),
            elements: 0,
            depth: 0,
            pending_empty: false,
        })
    }

    /// The root element's namespace (empty when it has none).
    pub fn namespace(&self) -> &[u8] {
        &self.namespace
    }

    fn malformed(&self, reason: impl Into<String>) -> XmlError {
        XmlError::Malformed {
            position: self.reader.buffer_position(),
            reason: reason.into(),
        }
    }

    fn parse_error(&self, error: &quick_xml::Error) -> XmlError {
        let reason = match error {
            // Its text quotes the entity or reference from the document: `&12345678901;` would
            // put a national identity number into the status answer and the audit table.
            quick_xml::Error::Escape(_) => {
                "an entity other than the five predefined ones, or an invalid character reference"
                    .to_owned()
            }
            other => content_free(&other.to_string()),
        };
        XmlError::Malformed {
            position: self.reader.error_position(),
            reason,
        }
    }

    /// Reads up to the root element and enters it. Its namespace becomes the document's.
    pub fn root(&mut self) -> Result<Element, XmlError> {
        loop {
            let (resolved, event) = match self.reader.read_resolved_event() {
                Ok(read) => read,
                Err(e) => return Err(self.parse_error(&e)),
            };
            let namespace = match &resolved {
                ResolveResult::Bound(ns) => Some(ns.as_ref().to_vec()),
                ResolveResult::Unbound => Some(Vec::new()),
                ResolveResult::Unknown(_) => None,
            };
            match event {
                Event::Decl(declaration) => {
                    if let Some(encoding) = declaration.encoding() {
                        let encoding =
                            encoding.map_err(|e| self.malformed(content_free(&e.to_string())))?;
                        let label = String::from_utf8_lossy(&encoding).into_owned();
                        if !label.eq_ignore_ascii_case("utf-8")
                            && !label.eq_ignore_ascii_case("utf8")
                        {
                            return Err(XmlError::UnsupportedEncoding(shown_label(&label)));
                        }
                    }
                }
                Event::Start(_) | Event::Empty(_) if namespace.is_none() => {
                    return Err(self.malformed("the root element uses an undeclared prefix"));
                }
                Event::Start(start) => {
                    self.namespace = namespace.unwrap_or_default();
                    return self.open(&start, true, false);
                }
                Event::Empty(start) => {
                    self.namespace = namespace.unwrap_or_default();
                    return self.open(&start, true, true);
                }
                Event::Text(text) => {
                    let text = text.unescape().map_err(|e| self.parse_error(&e))?;
                    if !text.trim().is_empty() {
                        return Err(self.malformed("text before the root element"));
                    }
                }
                Event::Comment(_) | Event::PI(_) => {}
                Event::DocType(_) => return Err(XmlError::Doctype),
                Event::CData(_) => return Err(self.malformed("CDATA before the root element")),
                Event::End(_) => return Err(self.malformed("an end tag before the root element")),
                Event::Eof => return Err(XmlError::NoRoot),
            }
        }
    }

    /// The next child of the current element (which it enters), or `None` at the current
    /// element's end (which it leaves).
    pub fn next_child(&mut self) -> Result<Option<Element>, XmlError> {
        if self.pending_empty {
            self.pending_empty = false;
            self.close();
            return Ok(None);
        }
        loop {
            let (resolved, event) = match self.reader.read_resolved_event() {
                Ok(read) => read,
                Err(e) => return Err(self.parse_error(&e)),
            };
            let ours = in_namespace(&resolved, &self.namespace);
            match event {
                Event::Start(start) => return self.open_child(&start, ours, false).map(Some),
                Event::Empty(start) => return self.open_child(&start, ours, true).map(Some),
                Event::End(_) => {
                    self.close();
                    return Ok(None);
                }
                Event::Text(text) => {
                    text.unescape().map_err(|e| self.parse_error(&e))?;
                }
                Event::CData(_) => {}
                Event::Comment(_) | Event::PI(_) => {}
                Event::Decl(_) => {
                    return Err(self.malformed("an XML declaration inside the document"));
                }
                Event::DocType(_) => return Err(XmlError::Doctype),
                Event::Eof => return Err(self.malformed("the document ends inside an element")),
            }
        }
    }

    /// The text of the current element (a leaf), which it leaves. Child elements are skipped (the
    /// XSD check reports them).
    pub fn text(&mut self) -> Result<String, XmlError> {
        if self.pending_empty {
            self.pending_empty = false;
            self.close();
            return Ok(String::new());
        }
        let mut content = String::new();
        loop {
            let (resolved, event) = match self.reader.read_resolved_event() {
                Ok(read) => read,
                Err(e) => return Err(self.parse_error(&e)),
            };
            let ours = in_namespace(&resolved, &self.namespace);
            match event {
                Event::Text(text) => {
                    content.push_str(&text.unescape().map_err(|e| self.parse_error(&e))?);
                }
                Event::CData(data) => {
                    let data = std::str::from_utf8(&data).map_err(|_| XmlError::NotUtf8)?;
                    content.push_str(data);
                }
                Event::Start(start) => {
                    self.open_child(&start, ours, false)?;
                    self.skip()?;
                }
                Event::Empty(start) => {
                    self.open_child(&start, ours, true)?;
                    self.skip()?;
                }
                Event::End(_) => {
                    self.close();
                    return Ok(content);
                }
                Event::Comment(_) | Event::PI(_) => {}
                Event::Decl(_) => {
                    return Err(self.malformed("an XML declaration inside the document"));
                }
                Event::DocType(_) => return Err(XmlError::Doctype),
                Event::Eof => return Err(self.malformed("the document ends inside an element")),
            }
        }
    }

    /// Skips the current element with everything inside it, still checking well-formedness,
    /// depth and element count.
    pub fn skip(&mut self) -> Result<(), XmlError> {
        if self.pending_empty {
            self.pending_empty = false;
            self.close();
            return Ok(());
        }
        let mut depth = 0usize;
        loop {
            let (resolved, event) = match self.reader.read_resolved_event() {
                Ok(read) => read,
                Err(e) => return Err(self.parse_error(&e)),
            };
            let resolvable = !matches!(resolved, ResolveResult::Unknown(_));
            match event {
                Event::Start(start) => {
                    depth += 1;
                    self.count_element(depth)?;
                    self.check_element(&start, resolvable)?;
                }
                Event::Empty(start) => {
                    self.count_element(depth + 1)?;
                    self.check_element(&start, resolvable)?;
                }
                Event::End(_) => {
                    if depth == 0 {
                        self.close();
                        return Ok(());
                    }
                    depth -= 1;
                }
                Event::Text(text) => {
                    text.unescape().map_err(|e| self.parse_error(&e))?;
                }
                Event::CData(_) | Event::Comment(_) | Event::PI(_) => {}
                Event::Decl(_) => {
                    return Err(self.malformed("an XML declaration inside the document"));
                }
                Event::DocType(_) => return Err(XmlError::Doctype),
                Event::Eof => return Err(self.malformed("the document ends inside an element")),
            }
        }
    }

    /// After the root element: only comments, processing instructions and blanks may follow.
    pub fn finish(mut self) -> Result<(), XmlError> {
        loop {
            let event = match self.reader.read_event() {
                Ok(event) => event,
                Err(e) => return Err(self.parse_error(&e)),
            };
            match event {
                Event::Eof => break,
                Event::Text(text) => {
                    let text = text.unescape().map_err(|e| self.parse_error(&e))?;
                    if !text.trim().is_empty() {
                        return Err(self.malformed("text after the root element"));
                    }
                }
                Event::Comment(_) | Event::PI(_) => {}
                Event::DocType(_) => return Err(XmlError::Doctype),
                _ => return Err(self.malformed("content after the root element")),
            }
        }
        Ok(())
    }

    fn count_element(&mut self, depth_below_current: usize) -> Result<(), XmlError> {
        if self.depth + depth_below_current > self.limits.max_depth {
            return Err(XmlError::TooDeep {
                limit: self.limits.max_depth,
            });
        }
        self.elements += 1;
        if self.elements > self.limits.max_elements {
            return Err(XmlError::TooManyElements {
                limit: self.limits.max_elements,
            });
        }
        Ok(())
    }

    /// Well-formedness of a skipped element: a declared prefix and clean attributes.
    fn check_element(&self, start: &BytesStart, resolvable: bool) -> Result<(), XmlError> {
        if !resolvable {
            return Err(self.malformed("an element uses an undeclared namespace prefix"));
        }
        for attribute in start.attributes() {
            let attribute = attribute.map_err(|e| self.malformed(content_free(&e.to_string())))?;
            attribute
                .unescape_value()
                .map_err(|e| self.parse_error(&e))?;
        }
        Ok(())
    }

    fn open_child(
        &mut self,
        start: &BytesStart,
        ours: Option<bool>,
        empty: bool,
    ) -> Result<Element, XmlError> {
        let Some(ours) = ours else {
            return Err(self.malformed("an element uses an undeclared namespace prefix"));
        };
        self.open(start, ours, empty)
    }

    /// Enters an element: bounds, attributes, frame.
    fn open(&mut self, start: &BytesStart, ours: bool, empty: bool) -> Result<Element, XmlError> {
        self.count_element(1)?;
        let name = std::str::from_utf8(start.local_name().as_ref())
            .map_err(|_| XmlError::NotUtf8)?
            .to_owned();
        let mut attributes = Vec::new();
        for attribute in start.attributes() {
            let attribute = attribute.map_err(|e| self.malformed(content_free(&e.to_string())))?;
            let key = attribute.key;
            if key.as_namespace_binding().is_some() {
                continue;
            }
            let local = std::str::from_utf8(key.local_name().as_ref())
                .map_err(|_| XmlError::NotUtf8)?
                .to_owned();
            let value = attribute
                .unescape_value()
                .map_err(|e| self.parse_error(&e))?
                .into_owned();
            attributes.push((local, value));
        }
        self.depth += 1;
        self.pending_empty = empty;
        Ok(Element {
            name,
            in_namespace: ours,
            attributes,
        })
    }

    /// Leaves the current element.
    fn close(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }
}

/// A parser's message with nothing of the document's text in it: quoted values masked and runs of
/// five or more digits replaced (the rules of the XSD validator's messages, [`super::xsd`]).
fn content_free(message: &str) -> String {
    super::xsd::clean_message(message)
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
        assert!(check_prolog(b"\xEF\xBB\xBF<?xml version=\"1.0\"?><!-- c --><a/>").is_ok());
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
}
