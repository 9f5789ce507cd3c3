//! Desktop notifications through the real tokd on a private bus, with the
//! test kit's notification server and portal: one notification per
//! episode of needing a human, a "Log in" action that logs in through the
//! browser, closed when valid again; `notify = false`, no server, a
//! stalled server, and no portal (`xdg-open`).

use crate::support::{World, eventually, tokd_bin, within, within_for};
use std::time::Duration;
use tokd_testkit::{Behaviour, Desktop, DesktopOptions, Notification, Tokd};

/// The notifications that name installation `name`.
fn about(desktop: &Desktop, name: &str) -> Vec<Notification> {
    desktop
        .notifications()
        .into_iter()
        .filter(|n| n.summary.starts_with(&format!("{name}:")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_notification_per_episode_and_its_action_logs_in() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let desktop = Desktop::start(&world.bus, DesktopOptions::default()).await;
        for _ in 0..3 {
            assert_eq!(world.tokctl(&["get", "a"]).await.status, 4);
        }
        // `m` logs in by a code copied by hand: told, but no action.
        assert_eq!(world.tokctl(&["get", "m"]).await.status, 4);
        desktop.until(|d| !about(d, "m").is_empty()).await;
        let shown = about(&desktop, "a");
        assert_eq!(
            shown.len(),
            1,
            "one per episode, not one per call: {shown:?}"
        );
        let note = &shown[0];
        assert_eq!(note.app_name, "tokd");
        assert!(note.body.contains("tokctl login a"), "{note:?}");
        assert_eq!(note.actions, ["default", "Log in", "login", "Log in"]);
        assert_eq!(about(&desktop, "m")[0].actions, Vec::<String>::new());
        assert!(about(&desktop, "b").is_empty(), "nobody asked for b");

        desktop.invoke(note.id, "login").await;
        desktop.until(|d| !d.opened().is_empty()).await;
        let url = desktop.opened().remove(0);
        world.play_browser(&url).await;
        desktop.until(|d| d.closed().contains(&note.id)).await;
        world.get("a").await;
        assert_eq!(about(&desktop, "a").len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_authorization_is_told_once_with_its_reason() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.login("a").await;
        let desktop = Desktop::start(&world.bus, DesktopOptions::default()).await;
        let token = world.get("a").await;
        assert!(world.emulator.revoke_grant_of(&token));
        let refresh = world.tokctl(&["refresh", "a"]).await;
        assert_eq!(refresh.status, 4, "{refresh:?}");
        for _ in 0..3 {
            assert_eq!(world.tokctl(&["get", "a"]).await.status, 4);
        }
        assert_eq!(world.tokctl(&["get", "m"]).await.status, 4);
        desktop.until(|d| !about(d, "m").is_empty()).await;
        let shown = about(&desktop, "a");
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert!(
            shown[0].body.contains("tokctl login a"),
            "the reason and what to do: {:?}",
            shown[0]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_false_or_no_server_is_quiet_and_not_an_error() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        // No notification server at all.
        assert_eq!(world.tokctl(&["get", "a"]).await.status, 4);
        assert!(
            eventually(Duration::from_secs(10), async || world.log().contains(
                "no notification server on the session bus; not notifying"
            ))
            .await,
            "{}",
            world.log()
        );
        assert!(!world.log().contains("ERROR"), "{}", world.log());
        assert_eq!(world.tokctl(&["list"]).await.status, 0);

        // A server, but notifications turned off.
        world
            .home
            .write_config(&world.config("\n[daemon]\nnotify = false\n"));
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        let desktop = Desktop::start(&world.bus, DesktopOptions::default()).await;
        assert_eq!(world.tokctl(&["get", "b"]).await.status, 4);
        assert!(
            eventually(Duration::from_secs(10), async || world
                .log()
                .contains("not notifying: notify = false"))
            .await,
            "{}",
            world.log()
        );
        assert_eq!(desktop.notifications(), Vec::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_notification_server_holds_up_nothing() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let options = DesktopOptions {
            stall: true,
            ..DesktopOptions::default()
        };
        let _desktop = Desktop::start(&world.bus, options).await;
        assert_eq!(world.tokctl(&["get", "a"]).await.status, 4);
        // While the server sits on the call: logins, gets, signals.
        world.login("b").await;
        world.get("b").await;
        assert_eq!(world.tokctl(&["list"]).await.status, 0);
        // The call is given up, not left hanging.
        assert!(
            eventually(Duration::from_secs(15), async || world
                .log()
                .contains("the notification server did not answer within 5s"))
            .await,
            "{}",
            world.log()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_portal_the_browser_is_opened_with_xdg_open() {
    within_for(Duration::from_secs(90), async {
        let mut world = World::start(Behaviour::wso2()).await;
        // An xdg-open that notes the URL it was given.
        let bin = world.home.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        let opened = world.home.path().join("opened");
        let script = bin.join("xdg-open");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nprintf '%s' \"$1\" > '{}.tmp' && mv '{0}.tmp' '{0}'\n",
                opened.display()
            ),
        )
        .expect("the script");
        crate::support::set_mode(&script, 0o755);
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        world.tokd = None;
        world.tokd = Some(
            Tokd::start_with_env(
                &tokd_bin(),
                &world.home,
                &world.bus,
                &[("TOKD_LOG", "debug"), ("PATH", &path)],
            )
            .await,
        );
        // A user who clicks the notification the moment it shows.
        let options = DesktopOptions {
            portal: false,
            click_at_once: Some("default"),
            ..DesktopOptions::default()
        };
        let _desktop = Desktop::start(&world.bus, options).await;
        assert_eq!(world.tokctl(&["get", "a"]).await.status, 4);
        assert!(
            eventually(Duration::from_secs(10), async || opened.exists()).await,
            "xdg-open was not run\n{}",
            world.log()
        );
        let url = std::fs::read_to_string(&opened).expect("the URL");
        world.play_browser(&url).await;
        world.get("a").await;
    })
    .await;
}
