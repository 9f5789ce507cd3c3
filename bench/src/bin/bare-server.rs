//! The floor for a D-Bus server: `org.tokd.tokd1.Manager.GetToken` on the
//! session bus under the name `org.tokd.bench.Bare`, answering a constant
//! 1 KiB token with no lookup, no check and no state, on a current-thread
//! runtime like tokd's. Runs until killed.

use tokd_shared::OBJECT_PATH;

/// The name the bare server owns.
const NAME: &str = "org.tokd.bench.Bare";

#[derive(Debug)]
struct Bare {
    token: String,
}

#[zbus::interface(name = "org.tokd.tokd1.Manager")]
impl Bare {
    #[zbus(out_args("access_token", "expires_at", "token_type", "warning"))]
    async fn get_token(&self, _name: &str, _min_valid_secs: u32) -> (String, i64, String, String) {
        (
            self.token.clone(),
            4_102_444_800,
            "bearer".to_owned(),
            String::new(),
        )
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let bare = Bare {
            token: "t".repeat(1024),
        };
        let _connection = zbus::connection::Builder::session()
            .serve_at(OBJECT_PATH, bare)
            .name(NAME)
            .build()
            .await?;
        std::future::pending::<()>().await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
