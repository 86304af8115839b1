//! The config parser (`config::parse`): any text gives a config or an
//! error naming the file (and where known the line and key), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match pimail::config::parse(text, "fuzz.toml", Path::new("/nonexistent")) {
        Ok(c) => {
            // The effective settings a person sees must render too.
            let _ = c.effective();
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.toml"), "{e}"),
    }
});
