//! The config parser: any text is either a config or a clear error with a
//! line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokd::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_str(text) {
        Ok(config) => {
            let _ = config.summary();
        }
        Err(error) => {
            let message = error.to_string();
            assert!(!message.is_empty());
        }
    }
});
