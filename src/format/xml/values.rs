//! The typed values the cursor reads (XSD dates and date-times) and how a label is shown in a
//! deviation, never with text from the document.

use chrono::{NaiveDate, NaiveDateTime};

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
