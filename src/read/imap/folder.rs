//! What the IMAP session needs of the account's folders: the two traits
//! the folder store implements ([`Account`], [`Folder`]) and the values
//! they exchange. See `docs/imap.md` for the contract in prose.
//!
//! Calls through these traits must be quick (in-memory index lookups, no
//! fsync): the session runs on the executor. Everything durable (CREATE,
//! DELETE, RENAME, APPEND, COPY, MOVE, EXPUNGE) is not a trait call but a
//! [`Write`] that the session hands to the driver as an action; the driver
//! performs it (on the mbox writer thread, with locks and fsync) and feeds
//! the [`WriteDone`] back. Message bodies never pass through the session:
//! [`Folder::section`] returns an opaque [`Folder::Body`] that the driver
//! streams (RFC 9051 6.4.5 BODY[], BINARY[]).
//!
//! Names are UTF-8 with `/` as the hierarchy separator; the session
//! converts from and to modified UTF-7 at the protocol edge.

use super::command::{DateTime, Flag, Section, StoreMode, TextField};

pub type Uid = u32;

/// Why a folder operation failed; mapped to a response code by the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// No such folder (`[NONEXISTENT]`; `[TRYCREATE]` for a target).
    NonExistent,
    /// `[ALREADYEXISTS]`
    AlreadyExists,
    /// Not possible by the rules (`[CANNOT]`): a child of a folder that
    /// holds mail (`\NoInferiors`), deleting INBOX, an invalid name.
    Cannot(String),
    /// A folder that holds only folders (`\Noselect`) cannot be opened.
    NoSelect,
    /// Temporary trouble: I/O, a lock held too long (`[UNAVAILABLE]`).
    Unavailable(String),
}

/// One folder as LIST shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    /// UTF-8, `/`-separated, `INBOX` for the INBOX.
    pub name: String,
    /// RFC 6154: `\Sent`, `\Drafts`, `\Trash`, `\Junk`, `\Archive`.
    pub special_use: Option<&'static str>,
    /// A parent that holds only folders (a directory).
    pub noselect: bool,
    /// A folder that holds mail (an mbox file) has no children.
    pub noinferiors: bool,
    pub subscribed: bool,
}

/// What STATUS and SELECT report (RFC 9051 6.3.11, 7.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub messages: u32,
    pub unseen: u32,
    pub deleted: u32,
    /// RFC 9051 STATUS SIZE: the sum of RFC822.SIZE.
    pub size: u64,
    pub uid_next: Uid,
    pub uid_validity: u32,
    pub highest_modseq: u64,
}

/// A message's metadata, from the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub uid: Uid,
    /// System flags in canonical case, then keywords.
    pub flags: Vec<Flag>,
    /// INTERNALDATE.
    pub internal_date: DateTime,
    /// RFC822.SIZE: octets with CRLF line ends, mbox quoting undone.
    pub size: u64,
    /// RFC 7162 MODSEQ of its last change.
    pub modseq: u64,
    /// The Date: header's day as seconds since the epoch, for SENTBEFORE
    /// and friends (RFC 9051 6.4.4); `None` if missing or unparsable.
    pub sent: Option<i64>,
}

impl Meta {
    /// A placeholder to be filled by [`Folder::meta_into`].
    pub fn empty() -> Meta {
        Meta {
            uid: 0,
            flags: Vec::new(),
            internal_date: DateTime {
                unix: 0,
                zone_minutes: 0,
            },
            size: 0,
            modseq: 0,
            sent: None,
        }
    }

    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }
}

/// A change another session or program made, reported by
/// [`Folder::poll`] in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// New mail (delivered, appended, copied in).
    Added(Uid),
    Expunged(Uid),
    /// Flags (and so MODSEQ) changed.
    Flags(Uid),
}

/// The outcome of a STORE on one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Done (perhaps with no change); the new metadata.
    Done(Meta),
    /// RFC 7162 3.1.3: its MODSEQ was above UNCHANGEDSINCE.
    Modified,
    /// The message is gone.
    Gone,
}

/// One selected folder, as one session sees it. The handle keeps the
/// session's place in the folder's change feed.
pub trait Folder {
    /// How the driver finds the octets of a section (file ranges, a
    /// decoded copy, ...).
    type Body;

    fn summary(&self) -> Summary;

    /// Every UID in the folder now, ascending (at SELECT).
    fn uids(&self) -> Vec<Uid>;

    fn meta(&self, uid: Uid) -> Option<Meta>;

    /// The position (from 0) in `uids` of the first message without
    /// `\Seen` (SELECT's `UNSEEN`, RFC 3501 6.3.1).
    fn first_unseen(&self, uids: &[Uid]) -> Option<usize> {
        uids.iter()
            .position(|&u| self.meta(u).is_some_and(|m| !m.has("\\Seen")))
    }

    /// [`Folder::meta`] into `into`, reusing its allocations (a FETCH of
    /// the whole folder calls this per message); `false` if `uid` is gone.
    fn meta_into(&self, uid: Uid, into: &mut Meta) -> bool {
        match self.meta(uid) {
            Some(m) => {
                *into = m;
                true
            }
            None => false,
        }
    }

    /// Writes the ENVELOPE list (`store::mime` writes it).
    fn envelope(&self, uid: Uid, out: &mut Vec<u8>) -> Result<(), StoreError>;

    /// Writes BODYSTRUCTURE (`extended`) or BODY (see
    /// `store::mime`).
    fn body_structure(&self, uid: Uid, extended: bool, out: &mut Vec<u8>)
        -> Result<(), StoreError>;

    /// A section's octets, cut to `partial` (start, length): its length
    /// and how to read it. `binary`: BINARY[] with the content transfer
    /// encoding undone (RFC 3516); `Err(Cannot)` if the encoding is
    /// unknown. A part that does not exist is an empty body (RFC 9051
    /// 6.4.5 leaves this open; Dovecot does the same).
    fn section(
        &self,
        uid: Uid,
        section: &Section,
        binary: bool,
        partial: Option<(u32, u32)>,
    ) -> Result<(u64, Self::Body), StoreError>;

    /// The day of the Date: header (seconds since the epoch at its
    /// start), for SENTBEFORE, SENTON and SENTSINCE when [`Meta::sent`]
    /// is not known; may read the message.
    fn sent(&self, uid: Uid) -> Option<i64> {
        self.meta(uid).and_then(|m| m.sent)
    }

    /// SEARCH on what must be read from the message (RFC 9051 6.4.4:
    /// substring, case-insensitive). `header` names a field for HEADER.
    fn matches(
        &self,
        uid: Uid,
        field: Option<TextField>,
        header: Option<&str>,
        needle: &[u8],
    ) -> Result<bool, StoreError>;

    /// Changes flags (quick: the index, written lazily). `unchanged_since`
    /// as in RFC 7162 3.1.3. The change is not reported back by `poll`.
    fn store(
        &mut self,
        uid: Uid,
        mode: StoreMode,
        flags: &[Flag],
        unchanged_since: Option<u64>,
    ) -> Stored;

    /// Changes since the last call, in order. This handle's own STOREs
    /// must not be reported (the session answered them already); its own
    /// writes may be (the session ignores UIDs it knows or removed).
    fn poll(&mut self) -> Vec<Change>;
}

/// The account: the folders and their list.
pub trait Account {
    type Folder: Folder;

    /// Every folder, parents included, INBOX first.
    fn list(&mut self) -> Result<Vec<FolderInfo>, StoreError>;

    fn status(&mut self, name: &str) -> Result<Summary, StoreError>;

    /// Opens a folder for SELECT/EXAMINE.
    fn open(&mut self, name: &str) -> Result<Self::Folder, StoreError>;

    fn subscribe(&mut self, name: &str, subscribed: bool) -> Result<(), StoreError>;
}

/// A durable change the driver carries out, then calls
/// [`super::session::Session::write_done`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A name ending in `/` is a parent that holds only folders
    /// (`\Noselect`); otherwise an empty mbox file (SPEC "Folders").
    Create(String),
    Delete(String),
    Rename(String, String),
    /// The spool the driver filled with the APPEND octets goes into
    /// `folder`; no date: the time of arrival (RFC 9051 6.3.12).
    Append {
        folder: String,
        flags: Vec<Flag>,
        date: Option<DateTime>,
    },
    /// COPY or MOVE of `uids` (ascending) from the selected folder.
    /// Into `Junk` the copies get `$Junk` (and lose `$NotJunk`), out of
    /// it `$NotJunk` (issue 16, "Spam-ready"): the store does that.
    Copy {
        from: String,
        uids: Vec<Uid>,
        to: String,
        is_move: bool,
    },
    /// EXPUNGE / UID EXPUNGE / CLOSE: remove these (`\Deleted`) messages.
    Expunge {
        folder: String,
        uids: Vec<Uid>,
    },
}

/// How a [`Write`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteDone {
    Done,
    /// APPEND: for `[APPENDUID]` (RFC 4315).
    Appended {
        uid_validity: u32,
        uid: Uid,
    },
    /// COPY/MOVE: source and new UIDs in pairs, for `[COPYUID]`.
    Copied {
        uid_validity: u32,
        from: Vec<Uid>,
        to: Vec<Uid>,
    },
    /// EXPUNGE: the UIDs actually removed.
    Expunged(Vec<Uid>),
    Failed(StoreError),
}
