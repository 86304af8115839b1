//! IMAP command framing and parsing (`read::imap::input` and
//! `read::imap::command`): any bytes a client sends, in any pieces, give
//! commands, continuation requests, APPEND announcements or BADs, never a
//! panic, and the reader never holds more than its limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pimail::read::imap::{command, input};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read size, so splits are fuzzed too.
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 64) + 1;
    let mut r = input::Reader::new(64);
    let mut i = 0;
    // Bounded: every round consumes input or ends.
    for _ in 0..data.len() + 2 {
        while let Some(ev) = r.next_event() {
            match ev {
                input::Event::Command(c) => {
                    assert!(c.len() <= input::MAX_COMMAND + input::MAX_LINE);
                    let _ = command::parse(&c);
                }
                input::Event::Append { size, .. } => {
                    // Alternate between taking and refusing the message.
                    if size % 2 == 0 {
                        r.accept_append();
                    } else {
                        r.refuse_append();
                    }
                }
                _ => {}
            }
            while r.append_left() > 0 && !r.append_data().is_empty() {
                let n = r.append_data().len();
                r.append_taken(n);
            }
        }
        if i >= data.len() {
            break;
        }
        let spare = r.spare();
        if spare.is_empty() {
            break;
        }
        let n = step.min(spare.len()).min(data.len() - i);
        spare[..n].copy_from_slice(&data[i..i + n]);
        r.filled(n);
        i += n;
    }
    // The parser alone, on the raw bytes as one command.
    let _ = command::parse(data);
    let _ = command::append_header(data);
});
