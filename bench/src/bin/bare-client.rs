//! The floor for a D-Bus client: one `GetToken` call on the session bus
//! with nothing else (no argument parsing, no proxy, no error mapping),
//! on a current-thread runtime. Prints the token.
//!
//! Usage: `bare-client NAME`

use std::io::Write;
use tokd_shared::{BUS_NAME, INTERFACE, OBJECT_PATH};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "bench".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = runtime.block_on(async {
        let connection = zbus::Connection::session().await?;
        let reply = connection
            .call_method(
                Some(BUS_NAME),
                OBJECT_PATH,
                Some(INTERFACE),
                "GetToken",
                &(name.as_str(), 60u32),
            )
            .await?;
        let (token, _, _, _): (String, i64, String, String) = reply.body().deserialize()?;
        Ok::<_, zbus::Error>(token)
    })?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(token.as_bytes())?;
    stdout.write_all(b"\n")?;
    Ok(())
}
