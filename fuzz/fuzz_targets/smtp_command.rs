//! SMTP command lines (`smtp::command::parse`): any bytes a client sends as
//! one line must give a command or a parse error, never a panic; a parsed
//! MAIL/RCPT address must print back to something that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pimail::mail::address::parse_mailbox;
use pimail::receive::smtp::command::{parse, Command};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Command::Mail {
            from: Some(a),
            params,
        }) => {
            let again = parse_mailbox(&a.to_string(), true);
            assert_eq!(again.as_ref(), Ok(&a), "printed {a} from {data:?}");
            let _ = params;
        }
        Ok(Command::Rcpt { to }) => {
            let again = parse_mailbox(&to.to_string(), true);
            assert_eq!(again.as_ref(), Ok(&to), "printed {to} from {data:?}");
        }
        _ => {}
    }
});
