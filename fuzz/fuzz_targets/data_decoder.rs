//! The DATA decoder (`smtp::data::DataDecoder`): whatever a client sends
//! after 354, the output never contains a CR (so an accepted message has
//! no bare CR), never a bare LF is accepted, and where the input is split
//! into reads changes nothing: not the output, the error, nor where DATA
//! ended.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pimail::receive::smtp::data::{DataDecoder, Progress};

/// Decodes `input` in pieces whose sizes come from `splits` (cycled).
fn decode(input: &[u8], splits: &[u8], max: u64) -> (Vec<u8>, Option<String>, Option<usize>, u64) {
    let mut d = DataDecoder::new(max);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < input.len() {
        let n = if splits.is_empty() {
            input.len()
        } else {
            usize::from(splits[i % splits.len()]).max(1)
        };
        i += 1;
        let piece = &input[pos..(pos + n).min(input.len())];
        if let Progress::Done { consumed } = d.feed(piece, &mut out) {
            assert!(consumed <= piece.len());
            return (
                out,
                d.error().map(|e| format!("{e:?}")),
                Some(pos + consumed),
                d.size(),
            );
        }
        pos += piece.len();
    }
    (out, d.error().map(|e| format!("{e:?}")), None, d.size())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // First byte: size limit; next byte: how many split sizes follow.
    let max = u64::from(data[0]) * 64;
    let n = usize::from(data[1]).min(data.len() - 2).min(16);
    let splits = &data[2..2 + n];
    let input = &data[2 + n..];
    let whole = decode(input, &[], max);
    let split = decode(input, splits, max);
    assert_eq!(whole, split, "split points changed the result");
    let (out, error, end, _) = &whole;
    assert!(!out.contains(&b'\r'), "CR in the decoded message");
    if error.is_none() {
        // Accepted: every LF in the output was a CRLF in the input, and
        // the end marker was really CRLF.CRLF (or the start of DATA).
        if let Some(end) = end {
            let e = *end;
            assert!(input[..e].ends_with(b".\r\n"));
            assert!(e == 3 || input[..e].ends_with(b"\r\n.\r\n"));
        }
        let lf_in = input[..end.unwrap_or(input.len())]
            .windows(2)
            .filter(|w| w == b"\r\n")
            .count();
        let lf_out = out.iter().filter(|&&b| b == b'\n').count();
        assert!(lf_out <= lf_in);
    }
});
