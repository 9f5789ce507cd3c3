//! The token-response parser and what is derived from it: never a panic
//! (an absurd `expires_in` included), and never a token in `Debug`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};
use tokd::secret::{AccessToken, RefreshToken};
use tokd::oauth::{parse_error_response, parse_retry_after, parse_token_response, sanitize};

fuzz_target!(|data: &[u8]| {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    if let Ok(response) = parse_token_response(data) {
        let _ = response.expires_at(now, true);
        let _ = response.expires_at(now, false);
        assert!(!response.access_token.expose().is_empty());
        // Debug is the same whatever the tokens are: nothing of them shows.
        let mut other = response.clone();
        other.access_token = AccessToken::new("x");
        other.refresh_token = other.refresh_token.map(|_| RefreshToken::new("y"));
        assert_eq!(format!("{response:?}"), format!("{other:?}"));
    }
    if let Some(error) = parse_error_response(data) {
        assert!(error.error.is_some() || error.error_description.is_some());
    }
    let text = String::from_utf8_lossy(data);
    let clean = sanitize(&text, 200);
    assert!(clean.chars().all(|c| !c.is_control()));
    let _ = parse_retry_after(&text, now);
});
