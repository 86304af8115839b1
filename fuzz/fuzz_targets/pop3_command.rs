//! POP3 command lines (`pop3::command::parse`): any bytes a client sends
//! as one line give a command or a parse error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pimail::read::pop3::command::parse(data);
});
