//! `tokd-caller [--private] NAME`: a program of its own that asks tokd for
//! NAME's token over the session bus, as a desktop program would, or with
//! `--private` over tokd's private socket (`$XDG_RUNTIME_DIR/tokd/bus`):
//! prints the token, or the error and exits 1. The caller-policy tests
//! use it as a program that is neither tokctl nor a general-purpose tool.

use std::process::ExitCode;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let private = args.first().is_some_and(|arg| arg == "--private");
    if private {
        args.remove(0);
    }
    let [name] = args.as_slice() else {
        eprintln!("usage: tokd-caller [--private] NAME");
        return ExitCode::from(2);
    };
    let result = if private {
        private_get(name)
    } else {
        async {
            let connection = zbus::Connection::session().await?;
            let proxy = tokd_shared::ManagerProxy::new(&connection).await?;
            proxy.get_token(name, 60).await
        }
        .await
        .map_err(|error| error.to_string())
    };
    match result {
        Ok((token, ..)) => {
            #[allow(clippy::print_stdout)]
            {
                println!("{token}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tokd-caller: {error}");
            ExitCode::from(1)
        }
    }
}

fn private_get(name: &str) -> Result<tokd_shared::direct::Token, String> {
    let path = tokd_shared::private_socket_path().ok_or("XDG_RUNTIME_DIR is not set")?;
    let mut stream =
        std::os::unix::net::UnixStream::connect(&path).map_err(|error| error.to_string())?;
    let within = Instant::now() + Duration::from_secs(30);
    let uid = rustix::process::getuid().as_raw();
    tokd_shared::direct::get_token(&mut stream, uid, name, 60, within, within)
        .map_err(|unanswered| format!("{unanswered:?}"))?
        .map_err(|error| error.to_string())
}
