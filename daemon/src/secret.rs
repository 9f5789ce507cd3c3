//! Secret values as types.
//!
//! Every secret the daemon handles is a newtype here whose `Debug` and
//! `Display` print `[redacted]` and whose memory is zeroed when it is
//! dropped (a rotated-out refresh token does not linger in the heap); the
//! raw value is reachable only through `expose()`, called where the value
//! is sent or stored. Pure: no I/O, no logging. Where the client secret
//! comes from (a command, a file) is the config's `secret_source`.

use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroize;

macro_rules! secret_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(transparent)]
        // A boxed `str` rather than a `String`: no spare capacity, and 8
        // bytes less in every record that holds one.
        pub struct $name(Box<str>);

        impl $name {
            /// Wraps a raw value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into().into_boxed_str())
            }

            /// The raw value, for the one place that sends or stores it.
            pub fn expose(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "([redacted])"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[redacted]")
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                self.0.zeroize();
            }
        }
    };
}

secret_type!(
    /// An OAuth access token.
    AccessToken
);
secret_type!(
    /// An OAuth refresh token.
    RefreshToken
);
secret_type!(
    /// A one-use authorization code.
    AuthorizationCode
);
secret_type!(
    /// A consumer's client secret.
    ClientSecret
);
secret_type!(
    /// A PKCE code verifier (RFC 7636).
    PkceVerifier
);
secret_type!(
    /// A device code (RFC 8628): whoever holds it can collect the tokens
    /// once the user approves.
    DeviceCode
);

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = "s3cr3t-value-42";

    #[test]
    fn every_secret_type_redacts_in_debug_and_display() {
        let shown = [
            format!("{:?} {}", AccessToken::new(RAW), AccessToken::new(RAW)),
            format!("{:?} {}", RefreshToken::new(RAW), RefreshToken::new(RAW)),
            format!(
                "{:?} {}",
                AuthorizationCode::new(RAW),
                AuthorizationCode::new(RAW)
            ),
            format!("{:?} {}", ClientSecret::new(RAW), ClientSecret::new(RAW)),
            format!("{:?} {}", PkceVerifier::new(RAW), PkceVerifier::new(RAW)),
            format!("{:#?}", Some(AccessToken::new(RAW))),
        ];
        for text in shown {
            assert!(!text.contains(RAW), "leaked: {text}");
            assert!(text.contains("redacted"), "{text}");
        }
    }

    #[test]
    fn expose_gives_the_raw_value() {
        assert_eq!(ClientSecret::new(RAW).expose(), RAW);
    }

    #[test]
    fn serialization_keeps_the_raw_value() {
        // The store must write the real token, not the redaction.
        let json = serde_json::to_string(&RefreshToken::new(RAW)).expect("serialize");
        assert_eq!(json, format!("\"{RAW}\""));
    }
}
