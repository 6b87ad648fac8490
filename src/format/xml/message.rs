//! The KITH message files inside a `.pat` (`MsgHead` e-prescription messages and `AppRec`
//! application receipts): checked to be safe, well-formed XML in a KITH namespace, and read only
//! for their message id. Their content is stored as it is.

use super::cursor::Cursor;
use super::{Schema, XmlError, XmlLimits, read_document, shown_name};

/// Every KITH standard's namespace starts with this.
pub const KITH_NAMESPACE_PREFIX: &str = "http://www.kith.no/xmlstds/";

/// Which kind of KITH document a message file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// `MsgHead`: an e-prescription message (ERM1, ERM7, ...) with its envelope header.
    MsgHead,
    /// `AppRec`: an application receipt answering a message.
    AppRec,
}

/// What the API keeps from a message file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    /// The root element.
    pub kind: MessageKind,
    /// `MsgHead/MsgInfo/MsgId` or `AppRec/Id`.
    pub msg_id: String,
    /// `MsgHead/MsgInfo/Type/@V` or `AppRec/MsgType/@V` (`ERM1`, `APPREC`, ...).
    pub message_type: Option<String>,
}

/// Checks a message file and extracts its id. The whole document is read, so a file that is
/// not well-formed to its last byte is refused.
pub fn parse_message(xml: &[u8], limits: &XmlLimits) -> Result<MessageInfo, XmlError> {
    let (events, _) = read_document(xml, limits, Schema::WellFormedOnly)?;
    let mut cursor = Cursor::new(&events);
    let root = cursor.root()?;
    let kind = match root.name.as_str() {
        "MsgHead" => MessageKind::MsgHead,
        "AppRec" => MessageKind::AppRec,
        other => {
            return Err(XmlError::WrongRoot {
                expected: "MsgHead or AppRec",
                found: shown_name(other),
            });
        }
    };
    if !cursor
        .namespace()
        .starts_with(KITH_NAMESPACE_PREFIX.as_bytes())
    {
        return Err(XmlError::WrongNamespace {
            expected: KITH_NAMESPACE_PREFIX,
        });
    }
    let mut msg_id = None;
    let mut message_type = None;
    while let Some(child) = cursor.next_child()? {
        match (kind, child.in_namespace, child.name.as_str()) {
            (MessageKind::MsgHead, true, "MsgInfo") => {
                while let Some(info) = cursor.next_child()? {
                    match (info.in_namespace, info.name.as_str()) {
                        (true, "MsgId") if msg_id.is_none() => msg_id = cursor.optional_string()?,
                        (true, "Type") => {
                            message_type = info.attribute("V").map(str::to_owned);
                            cursor.skip()?;
                        }
                        _ => cursor.skip()?,
                    }
                }
            }
            (MessageKind::AppRec, true, "Id") if msg_id.is_none() => {
                msg_id = cursor.optional_string()?;
            }
            (MessageKind::AppRec, true, "MsgType") => {
                message_type = child.attribute("V").map(str::to_owned);
                cursor.skip()?;
            }
            _ => cursor.skip()?,
        }
    }
    let msg_id = msg_id.ok_or_else(|| XmlError::MissingRequired {
        path: match kind {
            MessageKind::MsgHead => "MsgHead/MsgInfo/MsgId".into(),
            MessageKind::AppRec => "AppRec/Id".into(),
        },
    })?;
    Ok(MessageInfo {
        kind,
        msg_id,
        message_type,
    })
}
