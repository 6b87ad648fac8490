//! Small helpers for the HTTP clients of the crate (the data controller's client and the HelseID
//! client), shared so neither imports the other.

/// A reqwest error in words, with its causes (e.g. "connection refused"), never with a URL's query.
pub fn describe_reqwest(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    let mut depth = 0;
    while let Some(cause) = source {
        if depth < 3 {
            text.push_str(": ");
            text.push_str(&cause.to_string());
        }
        depth += 1;
        source = cause.source();
    }
    text
}
