//! What can be checked of a valid config without the network or a
//! secret: secret files that are missing or readable by other users,
//! secret programs that cannot be found, an inline secret in a file
//! others can read. Each finding is one sentence; `tokd --check-config`
//! prints them as `tokd: warning: …`, the daemon logs them at start and
//! reload. None stops tokd: a file may appear later, a program may be on
//! the service's PATH only.

use super::ClientSecretSource;
use super::Config;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

impl Config {
    /// The findings for this config, read from `path`.
    pub fn warnings(&self, path: &Path) -> Vec<String> {
        let mut warnings = Vec::new();
        for consumer in self.consumers.values() {
            let name = &consumer.name;
            match &consumer.secret {
                ClientSecretSource::File(file) => match std::fs::metadata(file) {
                    Err(_) => warnings.push(format!(
                        "consumer `{name}`: client_secret_file {} does not exist; requests that need the secret fail until it does",
                        file.display()
                    )),
                    Ok(metadata) if !metadata.is_file() => warnings.push(format!(
                        "consumer `{name}`: client_secret_file {} is not a file",
                        file.display()
                    )),
                    Ok(metadata) if readable_by_others(metadata.permissions().mode()) => {
                        warnings.push(format!(
                            "consumer `{name}`: client_secret_file {} is readable by other users; run `chmod 600 {}`",
                            file.display(),
                            file.display()
                        ));
                    }
                    Ok(_) => {}
                },
                ClientSecretSource::Command(argv) => {
                    if let Some(program) = argv.first()
                        && !program_found(program)
                    {
                        warnings.push(format!(
                            "consumer `{name}`: the client_secret_command program `{program}` is not found{}",
                            if program.contains('/') {
                                " or not executable"
                            } else {
                                " on PATH"
                            }
                        ));
                    }
                }
                ClientSecretSource::Inline(_) => {
                    if let Ok(metadata) = std::fs::metadata(path)
                        && readable_by_others(metadata.permissions().mode())
                    {
                        warnings.push(format!(
                            "consumer `{name}`: {} holds a client_secret and is readable by other users; run `chmod 600 {}`",
                            path.display(),
                            path.display()
                        ));
                    }
                }
                ClientSecretSource::None => {}
            }
        }
        for (registry, login) in &self.registries {
            let host = registry
                .rsplit_once(':')
                .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
                .map_or(registry.as_str(), |(host, _)| host);
            let loopback = host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|address| address.is_loopback());
            if loopback {
                warnings.push(format!(
                    "installation `{}`: registry `{registry}` is on this machine, and container tools talk to such registries over plain HTTP: while nothing of yours listens on that port, another user of this machine could, and would be given the token",
                    login.installation
                ));
            }
        }
        warnings
    }
}

fn readable_by_others(mode: u32) -> bool {
    mode & 0o044 != 0
}

/// Whether `program` can be run: a path to an executable file, or a
/// name found so on `PATH`.
fn program_found(program: &str) -> bool {
    let executable = |path: &Path| {
        std::fs::metadata(path)
            .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| executable(&dir.join(program)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_path_or_by_path() {
        assert!(program_found("sh"));
        assert!(program_found("/bin/sh"));
        assert!(!program_found("tokd-no-such-program"));
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(
            !program_found(&plain.display().to_string()),
            "not executable"
        );
        assert!(readable_by_others(0o644));
        assert!(readable_by_others(0o640));
        assert!(!readable_by_others(0o600));
    }
}
