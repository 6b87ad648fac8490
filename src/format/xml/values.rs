//! The typed values the cursor reads (strings, booleans, XSD dates and date-times, coded values,
//! identifiers), `None` when a value does not parse (the XSD check reports the departure), and how
//! a label is shown in an error, never with text from the document.

use chrono::{NaiveDate, NaiveDateTime};

use super::XmlError;
use super::cursor::{Cursor, Element};
use crate::model::{CodedValue, Identifier};

pub(super) fn parse_date(text: &str) -> Option<NaiveDate> {
    let (date, zone) = text.split_at_checked(10)?;
    if !is_time_zone(zone) {
        return None;
    }
    NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()
}

pub(super) fn parse_date_time(text: &str) -> Option<NaiveDateTime> {
    let local = if let Some(local) = text.strip_suffix('Z') {
        local
    } else if text.len() > 19 && is_time_zone(&text[text.len() - 6..]) {
        &text[..text.len() - 6]
    } else {
        text
    };
    local.parse().ok()
}

/// Empty, `Z` or `±hh:mm`.
pub(super) fn is_time_zone(zone: &str) -> bool {
    let bytes = zone.as_bytes();
    match bytes {
        [] | [b'Z'] => true,
        [sign, h1, h2, b':', m1, m2] => {
            matches!(sign, b'+' | b'-') && [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

/// An encoding label fit for an error: printable ASCII, at most 40 characters.
pub(super) fn shown_label(label: &str) -> String {
    label
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(40)
        .collect()
}

/// The typed leaves of the cursor; each consumes the current element.
impl Cursor<'_> {
    /// Trimmed text.
    pub fn string(&mut self) -> Result<String, XmlError> {
        Ok(self.text()?.trim().to_owned())
    }

    /// Trimmed text, `None` when empty.
    pub fn optional_string(&mut self) -> Result<Option<String>, XmlError> {
        let text = self.string()?;
        Ok(if text.is_empty() { None } else { Some(text) })
    }

    /// An `xs:boolean`; anything else is `None`.
    pub fn boolean(&mut self, element: &Element) -> Result<Option<bool>, XmlError> {
        self.typed(element, |text| match text {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        })
    }

    /// An `xs:date` (a time zone, if any, is dropped).
    pub fn date(&mut self, element: &Element) -> Result<Option<NaiveDate>, XmlError> {
        self.typed(element, parse_date)
    }

    /// An `xs:dateTime` as local wall-clock time (FM writes none with an offset; one, if any, is
    /// dropped).
    pub fn date_time(&mut self, element: &Element) -> Result<Option<NaiveDateTime>, XmlError> {
        self.typed(element, parse_date_time)
    }

    fn typed<T>(
        &mut self,
        element: &Element,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, XmlError> {
        if element.is_nil() {
            self.skip()?;
            return Ok(None);
        }
        Ok(parse(&self.string()?))
    }

    /// A coded value (`CS`/`CV`) from the attributes `V`, `S` and `DN`.
    pub fn coded(&mut self, element: &Element) -> Result<Option<CodedValue>, XmlError> {
        self.skip()?;
        let Some(code) = element.attribute("V") else {
            return Ok(None);
        };
        let display_name = element.attribute("DN").unwrap_or_default();
        Ok(Some(CodedValue {
            code: code.trim().to_owned(),
            system: element.attribute("S").map(|s| s.trim().to_owned()),
            display_name: display_name.to_owned(),
        }))
    }

    /// An `Ident` (`Id` and `TypeId`); `None` when either is missing.
    pub fn identifier(&mut self) -> Result<Option<Identifier>, XmlError> {
        let mut value = None;
        let mut type_id = None;
        while let Some(child) = self.next_child()? {
            match (child.in_namespace, child.name.as_str()) {
                (true, "Id") => value = Some(self.string()?),
                (true, "TypeId") => type_id = self.coded(&child)?,
                _ => self.skip()?,
            }
        }
        Ok(match (value, type_id) {
            (Some(value), Some(type_id)) => Some(Identifier { value, type_id }),
            _ => None,
        })
    }
}
