//! `tokd-caller NAME`: a program of its own that asks tokd for NAME's
//! token over the session bus, as a desktop program would: prints the
//! token, or the error and exits 1. The caller-policy tests use it as a
//! program that is neither tokctl nor a general-purpose tool.

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(name) = std::env::args().nth(1) else {
        eprintln!("usage: tokd-caller NAME");
        return ExitCode::from(2);
    };
    let result = async {
        let connection = zbus::Connection::session().await?;
        let proxy = tokd_shared::ManagerProxy::new(&connection).await?;
        proxy.get_token(&name, 60).await
    }
    .await;
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
