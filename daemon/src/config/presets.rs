//! Provider presets: the endpoints and client authentication of the
//! providers tokd knows by name. Explicit keys in a consumer table win.

use super::ClientAuth;
use serde::Deserialize;

/// A provider preset: endpoints and defaults for a known provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Bitbucket,
    Github,
    Smartthings,
}

/// What a preset supplies; explicit keys in the consumer table win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresetEndpoints {
    pub auth_url: &'static str,
    pub token_url: &'static str,
    pub revoke_url: Option<&'static str>,
    pub client_auth: ClientAuth,
}

impl Preset {
    pub fn endpoints(self) -> PresetEndpoints {
        match self {
            Self::Bitbucket => PresetEndpoints {
                auth_url: "https://bitbucket.org/site/oauth2/authorize",
                token_url: "https://bitbucket.org/site/oauth2/access_token",
                revoke_url: None,
                client_auth: ClientAuth::Basic,
            },
            Self::Github => PresetEndpoints {
                auth_url: "https://github.com/login/oauth/authorize",
                token_url: "https://github.com/login/oauth/access_token",
                revoke_url: None,
                client_auth: ClientAuth::Post,
            },
            Self::Smartthings => PresetEndpoints {
                auth_url: "https://api.smartthings.com/oauth/authorize",
                token_url: "https://auth-global.api.smartthings.com/oauth/token",
                revoke_url: None,
                client_auth: ClientAuth::Basic,
            },
        }
    }
}
