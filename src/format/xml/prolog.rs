//! The defence before any parser sees the bytes: the prolog scanned, a DOCTYPE (so any DTD or
//! entity declaration) refused, UTF-16 and UTF-32 refused, an XML declaration naming another
//! encoding than UTF-8 refused (libxml2 would convert it).

use super::XmlError;
use super::values::shown_label;

/// Refuses a DOCTYPE (or any other `<!` declaration) in the prolog, before any parser sees the
/// bytes, and refuses UTF-16 and UTF-32 byte order marks and an XML declaration of another
/// encoding than UTF-8. Comments and processing instructions are skipped; the scan stops at the
/// root element.
pub fn check_prolog(bytes: &[u8]) -> Result<(), XmlError> {
    if bytes.starts_with(&[0xFE, 0xFF]) || bytes.starts_with(&[0xFF, 0xFE]) {
        return Err(XmlError::UnsupportedEncoding("UTF-16".into()));
    }
    if bytes.starts_with(&[0, 0, 0xFE, 0xFF]) {
        return Err(XmlError::UnsupportedEncoding("UTF-32".into()));
    }
    let mut rest = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if let Some(label) = declared_encoding(rest)
        && !label.eq_ignore_ascii_case("utf-8")
        && !label.eq_ignore_ascii_case("utf8")
    {
        return Err(XmlError::UnsupportedEncoding(shown_label(&label)));
    }
    loop {
        let start = rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .unwrap_or(rest.len());
        rest = &rest[start..];
        if rest.starts_with(b"<?") {
            rest = after(rest, 2, b"?>").ok_or_else(|| prolog_error(bytes, rest))?;
        } else if rest.starts_with(b"<!--") {
            rest = after(rest, 4, b"-->").ok_or_else(|| prolog_error(bytes, rest))?;
        } else if rest.starts_with(b"<!") {
            return Err(XmlError::Doctype);
        } else {
            return Ok(());
        }
    }
}

/// The `encoding` of the XML declaration the document starts with, if it has one. The
/// declaration is read pseudo-attribute by pseudo-attribute (`version="1.0encoding='x'"` is a
/// version); one that does not read so is left to libxml2, which refuses it.
fn declared_encoding(bytes: &[u8]) -> Option<String> {
    let declaration = bytes.strip_prefix(b"<?xml")?;
    if !declaration.first()?.is_ascii_whitespace() {
        return None;
    }
    let end = declaration.windows(2).position(|w| w == b"?>")?;
    let mut rest = std::str::from_utf8(&declaration[..end]).ok()?;
    loop {
        rest = rest.trim_start_matches([' ', '\t', '\r', '\n']);
        let (name, after) = rest.split_once('=')?;
        let after = after.trim_start_matches([' ', '\t', '\r', '\n']);
        let quote = after.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let (value, after) = after[1..].split_once(quote)?;
        if name.trim_end_matches([' ', '\t', '\r', '\n']) == "encoding" {
            return Some(value.to_owned());
        }
        rest = after;
    }
}

/// The slice after the first `end` found from `skip` on.
fn after<'b>(rest: &'b [u8], skip: usize, end: &[u8]) -> Option<&'b [u8]> {
    let found = rest[skip..].windows(end.len()).position(|w| w == end)?;
    Some(&rest[skip + found + end.len()..])
}

fn prolog_error(whole: &[u8], rest: &[u8]) -> XmlError {
    XmlError::Malformed {
        position: (whole.len() - rest.len()) as u64,
        reason: "unterminated comment or processing instruction before the root element".into(),
    }
}
