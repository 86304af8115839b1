//! SMTP receive -> mbox, end to end: the real server over real sockets.

mod common;
use common::*;

#[test]
fn delivers_to_mbox_readable_by_python_mailbox() {
    let srv = Server::start();
    let mut c = srv.connect();
    c.hello();
    let body = b"Subject: hello\r\n\r\nFrom the start\r\n..leading dot\r\n>From quoted\r\n";
    let (code, text) = c.send_message("bob@example.com", &["alice@example.org"], body);
    assert_eq!(code, 250, "{text}");
    c.expect("QUIT", 221);
    let msgs = python_mbox_messages(&srv.mbox_path());
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        original_from_stored(&msgs[0]),
        b"Subject: hello\r\n\r\nFrom the start\r\n.leading dot\r\n>From quoted\r\n".to_vec()
    );
}
