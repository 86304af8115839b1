//! Address parsing (`address::parse_path`): any path text gives an address
//! or an error, never a panic; an address prints back to text that parses
//! to the same address (what goes into Return-Path and logs is faithful).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pimail::mail::address::{parse_mailbox, parse_path};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for utf8 in [false, true] {
        if let Ok((Some(a), rest)) = parse_path(s, utf8) {
            assert!(rest.is_empty() || rest.starts_with(' '));
            let printed = a.to_string();
            assert_eq!(
                parse_mailbox(&printed, utf8).as_ref(),
                Ok(&a),
                "printed {printed}"
            );
            let bracketed = format!("<{printed}>");
            assert_eq!(
                parse_path(&bracketed, utf8).map(|(a, _)| a),
                Ok(Some(a.clone())),
                "printed {bracketed}"
            );
        }
    }
});
