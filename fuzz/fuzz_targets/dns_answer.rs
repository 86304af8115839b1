//! DNS answers (`dns::parse_answer`, then `dns::follow` over the records):
//! whatever comes back from the network, an answer or an error, never a
//! panic, and following CNAMEs terminates.
#![no_main]

use hickory_proto::rr::{Name, RecordType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let Ok(name) = Name::from_ascii("example.org.") else {
        return;
    };
    let rtype = match data[0] % 3 {
        0 => RecordType::MX,
        1 => RecordType::A,
        _ => RecordType::AAAA,
    };
    let id = u16::from_be_bytes([data[1], data[2]]);
    if let Ok(pimail::net::dns::Answer::Records(records)) =
        pimail::net::dns::parse_answer(&data[3..], id, &name, rtype)
    {
        let _ = pimail::net::dns::follow(&records, &name, rtype);
    }
});
