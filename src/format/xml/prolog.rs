//! The defence before any parser sees the bytes: the prolog scanned, a DOCTYPE (so any DTD or
//! entity declaration) refused, UTF-16 and UTF-32 refused.

use super::XmlError;

/// Refuses a DOCTYPE (or any other `<!` declaration) in the prolog, before any parser sees the
/// bytes, and refuses UTF-16 and UTF-32 byte order marks. Comments, processing instructions and
/// the XML declaration are skipped; the scan stops at the root element.
pub fn check_prolog(bytes: &[u8]) -> Result<(), XmlError> {
    if bytes.starts_with(&[0xFE, 0xFF]) || bytes.starts_with(&[0xFF, 0xFE]) {
        return Err(XmlError::UnsupportedEncoding("UTF-16".into()));
    }
    if bytes.starts_with(&[0, 0, 0xFE, 0xFF]) {
        return Err(XmlError::UnsupportedEncoding("UTF-32".into()));
    }
    let mut rest = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
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
