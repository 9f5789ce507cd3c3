//! Provider presets: what tokd knows of the big providers by name. A
//! preset supplies endpoints (unless the consumer has an `issuer`, whose
//! document is read instead), the client authentication, parameters the
//! provider needs to issue a refresh token, scopes it needs for one, the
//! user name git wants with its tokens, and a keep-alive schedule where
//! idle refresh tokens expire. Explicit keys in a consumer table win.

use super::ClientAuth;
use serde::Deserialize;

/// A provider preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Atlassian,
    Bitbucket,
    Github,
    Gitlab,
    Google,
    Microsoft,
    Smartthings,
}

/// What a preset supplies. `{tenant}` in a URL is the consumer's `tenant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresetEndpoints {
    pub auth_url: &'static str,
    pub token_url: &'static str,
    pub revoke_url: Option<&'static str>,
    pub device_url: Option<&'static str>,
    pub client_auth: ClientAuth,
    /// Added to the authorization URL.
    pub auth_params: &'static [(&'static str, &'static str)],
    /// Added to every installation's scopes (`offline_access`: without it
    /// no refresh token is issued).
    pub extra_scopes: &'static [&'static str],
    /// The user name for git over HTTPS with an access token.
    pub git_username: Option<&'static str>,
    /// Where the provider serves git over HTTPS.
    pub git_hosts: &'static [&'static str],
    /// The user name container registries want with an access token.
    pub registry_username: Option<&'static str>,
    /// A cron schedule that refreshes installations without one: the
    /// provider lets an unused refresh token expire.
    pub keep_alive: Option<&'static str>,
}

/// Weekly, Monday 04:00 UTC: far inside every provider's idle limit.
const WEEKLY: &str = "0 0 4 * * 1";

const NONE: PresetEndpoints = PresetEndpoints {
    auth_url: "",
    token_url: "",
    revoke_url: None,
    device_url: None,
    client_auth: ClientAuth::Basic,
    auth_params: &[],
    extra_scopes: &[],
    git_username: None,
    git_hosts: &[],
    registry_username: None,
    keep_alive: None,
};

impl Preset {
    /// Every preset, for messages.
    pub const ALL: [Preset; 7] = [
        Self::Atlassian,
        Self::Bitbucket,
        Self::Github,
        Self::Gitlab,
        Self::Google,
        Self::Microsoft,
        Self::Smartthings,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Atlassian => "atlassian",
            Self::Bitbucket => "bitbucket",
            Self::Github => "github",
            Self::Gitlab => "gitlab",
            Self::Google => "google",
            Self::Microsoft => "microsoft",
            Self::Smartthings => "smartthings",
        }
    }

    pub fn endpoints(self) -> PresetEndpoints {
        match self {
            // Atlassian Cloud 3LO: rotating refresh tokens that expire
            // after 90 days unused; `audience` and `prompt=consent` are
            // required, `offline_access` asks for a refresh token.
            Self::Atlassian => PresetEndpoints {
                auth_url: "https://auth.atlassian.com/authorize",
                token_url: "https://auth.atlassian.com/oauth/token",
                client_auth: ClientAuth::Post,
                auth_params: &[("audience", "api.atlassian.com"), ("prompt", "consent")],
                extra_scopes: &["offline_access"],
                keep_alive: Some(WEEKLY),
                ..NONE
            },
            Self::Bitbucket => PresetEndpoints {
                auth_url: "https://bitbucket.org/site/oauth2/authorize",
                token_url: "https://bitbucket.org/site/oauth2/access_token",
                git_username: Some("x-token-auth"),
                git_hosts: &["bitbucket.org"],
                ..NONE
            },
            Self::Github => PresetEndpoints {
                auth_url: "https://github.com/login/oauth/authorize",
                token_url: "https://github.com/login/oauth/access_token",
                device_url: Some("https://github.com/login/device/code"),
                client_auth: ClientAuth::Post,
                git_username: Some("x-access-token"),
                git_hosts: &["github.com", "gist.github.com"],
                ..NONE
            },
            // gitlab.com; a self-hosted GitLab is an `issuer`.
            Self::Gitlab => PresetEndpoints {
                auth_url: "https://gitlab.com/oauth/authorize",
                token_url: "https://gitlab.com/oauth/token",
                revoke_url: Some("https://gitlab.com/oauth/revoke"),
                device_url: Some("https://gitlab.com/oauth/authorize_device"),
                client_auth: ClientAuth::Post,
                git_username: Some("oauth2"),
                git_hosts: &["gitlab.com"],
                ..NONE
            },
            // A refresh token only with `access_type=offline`, and again
            // on a repeated consent only with `prompt=consent`; unused
            // refresh tokens expire after six months.
            Self::Google => PresetEndpoints {
                auth_url: "https://accounts.google.com/o/oauth2/v2/auth",
                token_url: "https://oauth2.googleapis.com/token",
                revoke_url: Some("https://oauth2.googleapis.com/revoke"),
                device_url: Some("https://oauth2.googleapis.com/device/code"),
                client_auth: ClientAuth::Post,
                auth_params: &[("access_type", "offline"), ("prompt", "consent")],
                keep_alive: Some(WEEKLY),
                // Artifact Registry and Container Registry.
                registry_username: Some("oauth2accesstoken"),
                ..NONE
            },
            // Entra ID v2; refresh tokens expire after 90 days unused.
            Self::Microsoft => PresetEndpoints {
                auth_url: "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
                token_url: "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
                device_url: Some(
                    "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode",
                ),
                client_auth: ClientAuth::Post,
                extra_scopes: &["offline_access"],
                keep_alive: Some(WEEKLY),
                ..NONE
            },
            Self::Smartthings => PresetEndpoints {
                auth_url: "https://api.smartthings.com/oauth/authorize",
                token_url: "https://auth-global.api.smartthings.com/oauth/token",
                ..NONE
            },
        }
    }
}
