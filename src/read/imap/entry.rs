//! One message as the IMAP store knows it ([`Entry`]): kept in a
//! folder's state, its sidecar (`sidecar`) and the writer's index of
//! delivered mail (`appended`).

use super::command::Flag;
use super::folder::Uid;
use super::mimedb::Ptr;
use crate::store::maildrop::Message;

/// One message as IMAP knows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub msg: Message,
    pub uid: Uid,
    pub flags: Vec<Flag>,
    pub modseq: u64,
    pub date: i64,
    /// The seal's id, when pimail wrote it.
    pub seal_id: Option<String>,
    /// Where the message starts for IMAP: after a seal that is its first
    /// line (pimail's trace field is not the client's business, and an
    /// APPENDed message must come back as it was sent).
    pub body_start: u64,
    /// RFC822.SIZE (the wire size from `body_start`).
    pub size: u64,
    /// Its MIME record in the folder's `.mime` file (ENVELOPE,
    /// BODYSTRUCTURE, section positions), written when first indexed.
    pub(super) mime: Option<Ptr>,
}
