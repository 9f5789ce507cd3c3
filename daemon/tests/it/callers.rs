//! Who may ask: per-installation caller policies (`callers`,
//! `unknown_callers`), `tokctl allow`/`disallow`/`callers`/`log`.

use crate::support::{Out, World, tokctl_bin};
use tokd_testkit::Behaviour;

/// `dbus-send` calling GetToken for `name` on the world's bus: a program
/// other than tokctl that talks to tokd's D-Bus API itself.
async fn dbus_send_get(world: &World, name: &str) -> Out {
    let output = tokio::process::Command::new("dbus-send")
        .envs(world.home.env(&world.bus))
        .args([
            "--session",
            "--print-reply",
            "--dest=org.tokd.tokd1",
            "/org/tokd/tokd1",
            "org.tokd.tokd1.Manager.GetToken",
            &format!("string:{name}"),
            "uint32:60",
        ])
        .kill_on_drop(true)
        .output()
        .await
        .expect("run dbus-send");
    Out {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn dbus_send_path() -> String {
    std::fs::canonicalize(which("dbus-send"))
        .expect("dbus-send")
        .display()
        .to_string()
}

fn which(program: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|path| path.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

fn guarded(callers: &str) -> String {
    format!(
        "[installations.guarded]\nconsumer = \"acme\"\ngrant = \"client_credentials\"\ncallers = {callers}\n"
    )
}

#[tokio::test]
async fn a_caller_the_policy_does_not_name_gets_nothing_until_the_sentence_is_followed() {
    crate::support::within(async {
        let tokctl = std::fs::canonicalize(tokctl_bin()).expect("tokctl");
        let mut world = World::prepare(Behaviour::wso2()).await;
        world
            .home
            .write_config(&world.config(&guarded(&format!("[\"exe:{}\"]", tokctl.display()))));
        world.start_tokd().await;

        // tokctl is named: it gets the token.
        let token = world.get("guarded").await;
        // dbus-send is not: a refusal that says who, and what allows it.
        let refused = dbus_send_get(&world, "guarded").await;
        assert_ne!(refused.status, 0, "{refused:?}");
        let dbus_send = dbus_send_path();
        assert!(
            refused.stderr.contains("org.tokd.tokd1.Error.AccessDenied")
                && refused.stderr.contains(&format!("{dbus_send} "))
                && refused
                    .stderr
                    .contains("may not get the tokens of `guarded`"),
            "{refused:?}"
        );
        assert!(
            !format!("{refused:?}").contains(&token),
            "a refused caller saw the token"
        );
        let advice = format!("tokctl allow guarded exe:{dbus_send}");
        assert!(refused.stderr.contains(&advice), "{refused:?}");
        // An installation without a policy serves it as before.
        let open = dbus_send_get(&world, "bot").await;
        assert_eq!(open.status, 0, "{open:?}");

        // Doing exactly what the sentence says lets it in...
        let words: Vec<&str> = advice.split(' ').skip(1).collect();
        let allowed = world.tokctl(&words).await;
        assert_eq!(allowed.status, 0, "{allowed:?}");
        assert!(
            allowed.stderr.contains("may now get the tokens of guarded"),
            "{allowed:?}"
        );
        let got = dbus_send_get(&world, "guarded").await;
        assert_eq!(got.status, 0, "{got:?}\n{}", world.log());
        assert!(got.stdout.contains(&token), "{got:?}");

        // ...which `tokctl callers` shows, and a restart keeps.
        let shown = world.tokctl(&["callers", "guarded"]).await;
        assert_eq!(shown.status, 0, "{shown:?}");
        assert!(
            shown
                .stdout
                .contains(&format!("exe:{} (config)", tokctl.display())),
            "{shown:?}"
        );
        assert!(
            shown.stdout.contains(&format!("exe:{dbus_send} (allowed;")),
            "{shown:?}"
        );
        assert!(shown.stdout.contains("others: deny"), "{shown:?}");
        assert!(world.tokd().terminate().success());
        world.start_tokd().await;
        assert_eq!(dbus_send_get(&world, "guarded").await.status, 0);
        world.get("bot").await;

        // `tokctl log`: who got which token, never the token.
        let log = world.tokctl(&["log", "guarded"]).await;
        assert_eq!(log.status, 0, "{log:?}");
        assert!(
            log.stdout
                .contains(&format!(" guarded GetToken {dbus_send} (pid ")),
            "{log:?}"
        );
        assert!(!log.stdout.contains(" bot "), "only guarded's: {log:?}");
        assert!(!log.stdout.contains(&token) && !world.log().contains(&token));
        assert!(
            world
                .tokctl(&["log"])
                .await
                .stdout
                .contains(" bot GetToken "),
            "all installations'"
        );

        // Taken back: refused again.
        let taken = world
            .tokctl(&["disallow", "guarded", &format!("exe:{dbus_send}")])
            .await;
        assert_eq!(taken.status, 0, "{taken:?}");
        assert_ne!(dbus_send_get(&world, "guarded").await.status, 0);

        // The config's own list changes with a reload.
        world
            .home
            .write_config(&world.config(&guarded("[\"any\"]")));
        let reloaded = world.tokctl(&["reload"]).await;
        assert_eq!(reloaded.status, 0, "{reloaded:?}");
        assert_eq!(dbus_send_get(&world, "guarded").await.status, 0);

        // Bad rules are refused, in the config and on the command line.
        let bad = world.tokctl(&["allow", "guarded", "pid:1"]).await;
        assert_ne!(bad.status, 0);
        assert!(bad.stderr.contains("is not a caller"), "{bad:?}");
        world
            .home
            .write_config(&world.config(&guarded("[\"dbus-send\"]")));
        let refused_reload = world.tokctl(&["reload"]).await;
        assert_ne!(refused_reload.status, 0);
        assert!(
            refused_reload
                .stderr
                .contains("`callers`: `dbus-send` is not a caller"),
            "{refused_reload:?}"
        );
    })
    .await;
}
