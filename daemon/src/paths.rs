//! Where tokd finds its config and keeps its state.
//!
//! Config: `--config PATH`, else `$TOKD_CONFIG`, else
//! `$XDG_CONFIG_HOME/tokd/config.toml` (default `~/.config/tokd/`).
//! State: `$XDG_STATE_HOME/tokd/` (default `~/.local/state/tokd/`).
//! Both through the `directories` crate, which applies the XDG rules.

use std::ffi::OsString;
use std::path::PathBuf;

/// The environment variable that overrides the config path.
pub const CONFIG_ENV: &str = "TOKD_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error("cannot find the home folder to locate {0}; set {CONFIG_ENV} or pass --config")]
    NoHome(&'static str),
}

/// The config file to read.
pub fn config_path(explicit: Option<PathBuf>) -> Result<PathBuf, PathsError> {
    choose_config_path(
        explicit,
        std::env::var_os(CONFIG_ENV),
        directories::BaseDirs::new().map(|dirs| dirs.config_dir().to_owned()),
    )
}

fn choose_config_path(
    explicit: Option<PathBuf>,
    from_env: Option<OsString>,
    config_home: Option<PathBuf>,
) -> Result<PathBuf, PathsError> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    if let Some(path) = from_env.filter(|value| !value.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    config_home
        .map(|home| home.join("tokd").join("config.toml"))
        .ok_or(PathsError::NoHome("the config file"))
}

/// The state folder (tokens).
pub fn state_dir() -> Result<PathBuf, PathsError> {
    directories::BaseDirs::new()
        .and_then(|dirs| dirs.state_dir().map(|dir| dir.join("tokd")))
        .ok_or(PathsError::NoHome("the state folder"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_beats_environment_beats_xdg() {
        let home = Some(PathBuf::from("/home/u/.config"));
        let env = Some(OsString::from("/etc/tokd.toml"));
        assert_eq!(
            choose_config_path(Some("/x.toml".into()), env.clone(), home.clone()).ok(),
            Some(PathBuf::from("/x.toml"))
        );
        assert_eq!(
            choose_config_path(None, env, home.clone()).ok(),
            Some(PathBuf::from("/etc/tokd.toml"))
        );
        assert_eq!(
            choose_config_path(None, Some(OsString::new()), home.clone()).ok(),
            Some(PathBuf::from("/home/u/.config/tokd/config.toml")),
            "an empty TOKD_CONFIG is ignored"
        );
        assert!(choose_config_path(None, None, None).is_err());
    }
}
