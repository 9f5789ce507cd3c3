//! What the README promises in "How refreshing works" and "When things go
//! wrong", each proven under both stores: every test here is one body run
//! twice, `NAME::file` with the tokens in state files and `NAME::keyring`
//! with them in a real GNOME Keyring on the test's private bus.
//!
//! The promises: a refresh on schedule with no caller; a restart that
//! keeps tokens and schedule without a refresh; a get during a rotation
//! served the new token; revocation; a reload with changed scopes; an
//! outage ridden out; a lost grant that needs (and is cured by) a login;
//! a held token served while the provider fails. Rotation under SIGKILL is
//! `failures::sigkill_at_random_moments_loses_no_installation`, likewise
//! for both.

use crate::support::{World, eventually, for_each_store, within, within_for};
use futures_util::StreamExt;
use std::time::Duration;
use tokd_testkit::{Behaviour, Fault, FaultBody};

/// Waits for a `TokenRefreshed` signal for each of `names`.
async fn refreshed(signals: &mut tokd_shared::TokenRefreshedStream, names: &[&str]) -> Vec<String> {
    let mut missing: Vec<&str> = names.to_vec();
    let mut seen = Vec::new();
    while !missing.is_empty() {
        let signal = signals.next().await.expect("TokenRefreshed");
        let args = signal.args().expect("args");
        seen.push(args.name.to_string());
        missing.retain(|name| *name != args.name);
    }
    seen
}

/// A token for `name` that needs to last only a second (the tests here use
/// short-lived tokens, which the default 60 s would refresh).
async fn token(world: &World, name: &str) -> String {
    world.get_with(name, &["--min-valid", "1s"]).await
}

for_each_store! {
    /// The scheduler refreshes ahead of expiry while nobody asks.
    async fn a_refresh_happens_ahead_of_expiry_with_no_caller(store) {
        within(async {
            let mut behaviour = Behaviour::wso2();
            behaviour.access_lifetime = Duration::from_secs(12);
            let world = World::start_in(store, behaviour).await;
            let (_connection, proxy) = world.proxy().await;
            let mut signals = proxy.receive_token_refreshed().await.expect("signal");
            world.login("a").await;
            let first = token(&world, "a").await;
            assert_eq!(world.emulator.counters().refresh_token, 0);
            // The login announces a token; then the scheduler refreshes (12 s
            // lifetime: due after about 6 s) while nobody asks.
            refreshed(&mut signals, &["a"]).await;
            refreshed(&mut signals, &["a"]).await;
            assert_eq!(world.emulator.counters().refresh_token, 1);
            let info = proxy.status("a").await.expect("status");
            assert_eq!(info.state, "valid");
            assert!(info.next_refresh > info.last_refresh, "{info:?}");
            let second = token(&world, "a").await;
            assert_ne!(first, second);
            assert!(world.emulator.access_token_is_valid(&second));
            world.assert_kept_privately("a", &[&first, &second]).await;
        })
        .await;
    }
}

for_each_store! {
    /// A restart serves the kept tokens without asking the provider, and
    /// schedules every installation again: each is refreshed when due with
    /// nobody asking. (With the keyring, a restarted tokd once scheduled
    /// nothing: its tokens were read after the schedule was computed.)
    async fn a_restart_keeps_tokens_and_schedule_without_a_refresh(store) {
        within(async {
            let mut behaviour = Behaviour::wso2();
            // Due 15-20 s after it is issued (half the lifetime, less
            // jitter): long after the restart, well within the test.
            behaviour.access_lifetime = Duration::from_secs(40);
            let mut world = World::start_in(store, behaviour).await;
            world.login("a").await;
            world.login("b").await;
            let a = token(&world, "a").await;
            let bot = token(&world, "bot").await;
            let status = world.tokd().terminate();
            assert!(status.success(), "SIGTERM ends tokd cleanly: {status}");
            world.assert_kept_privately("a", &[&a]).await;
            world.assert_kept_privately("bot", &[&bot]).await;

            let before = world.emulator.counters();
            world.start_tokd().await;
            let (_connection, proxy) = world.proxy().await;
            let mut signals = proxy.receive_token_refreshed().await.expect("signal");
            assert_eq!(token(&world, "a").await, a);
            assert_eq!(token(&world, "bot").await, bot);
            assert_eq!(
                world.emulator.counters(),
                before,
                "no new request, no new login"
            );
            let now = tokd::schedule::unix_seconds(std::time::SystemTime::now());
            for name in ["a", "b", "bot"] {
                let status = world.status(name).await;
                assert_eq!(status["state"], "valid", "{name}: {status}");
                assert!(
                    status["next_refresh"].as_i64().is_some_and(|next| next > now),
                    "{name} is scheduled after the restart: {status}\n{}",
                    world.log()
                );
            }
            refreshed(&mut signals, &["a", "b", "bot"]).await;
            let after = world.emulator.counters();
            assert_eq!(after.refresh_token, before.refresh_token + 2, "a and b");
            assert_eq!(after.client_credentials, before.client_credentials + 1);
            let new_a = token(&world, "a").await;
            assert_ne!(new_a, a);
            assert!(world.emulator.access_token_is_valid(&new_a));
            world.assert_kept_privately("a", &[&a, &new_a]).await;
        })
        .await;
    }
}

for_each_store! {
    /// A `get` that arrives while a refresh is in flight waits for it: a
    /// provider like django-oauth-toolkit deletes the old access token the
    /// moment it rotates, so the held one may already be dead. The wait is
    /// bounded: with the refresh still unanswered after a few seconds, the
    /// held token is served.
    async fn a_get_during_a_rotation_waits_for_the_new_token(store) {
        within(async {
            let world = World::start_in(store, Behaviour::django_oauth_toolkit()).await;
            world.login("a").await;
            let old = world.get("a").await;

            // The provider rotates at once (the old access token dies with
            // the old refresh token) and its answer is slow to arrive.
            let mut hold = world.emulator.hold_next_answer();
            let refresh = tokio::spawn(world.command(&["refresh", "a"]).output());
            hold.arrived().await;
            assert!(!world.emulator.access_token_is_valid(&old), "rotated");
            let get = tokio::spawn(world.command(&["get", "a"]).output());
            // The answer is let through only once tokd holds the get back.
            let waiting = eventually(Duration::from_secs(20), async || {
                world.log().contains("a refresh is in flight; waiting for its token")
            })
            .await;
            assert!(waiting, "{}", world.log());
            hold.release();
            let got = get.await.expect("join").expect("tokctl get");
            assert_eq!(got.status.code(), Some(0), "{got:?}");
            let new = String::from_utf8(got.stdout).expect("utf-8");
            let new = new.trim_end();
            assert_ne!(new, old, "the get was not served the token the rotation killed");
            assert!(world.emulator.access_token_is_valid(new));
            let refresh = refresh.await.expect("join").expect("tokctl refresh");
            assert_eq!(refresh.status.code(), Some(0), "{refresh:?}");

            // A refresh that stays unanswered (held before the provider
            // decides, so the held token still works) holds a get up only
            // for a few seconds.
            let mut hold = world.emulator.hold_next();
            let refresh = tokio::spawn(world.command(&["refresh", "a"]).output());
            hold.arrived().await;
            let out = world.tokctl(&["get", "a"]).await;
            assert_eq!((out.status, out.stdout.trim_end()), (0, new), "{out:?}");
            assert!(
                world.log().contains("the refresh in flight is still unanswered; serving the held token"),
                "{}",
                world.log()
            );
            hold.release();
            let refresh = refresh.await.expect("join").expect("tokctl refresh");
            assert_eq!(refresh.status.code(), Some(0), "{refresh:?}");
            let newest = world.get("a").await;
            assert_ne!(newest, new);
            assert!(world.emulator.access_token_is_valid(&newest));
            world.assert_kept_privately("a", &[&old, new, &newest]).await;
        })
        .await;
    }
}

/// A caller asking for more than the provider's tokens live is given the
/// held token, with a warning, for a while rather than cause a refresh
/// each; during a refresh in flight it waits for the new token like any
/// other get (it was once handed the token the rotation was killing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_that_fell_short_waits_for_a_rotation_too() {
    within(async {
        let world = World::start(Behaviour::django_oauth_toolkit()).await;
        world.login("a").await;
        let short = world.tokctl(&["get", "a", "--min-valid", "24h"]).await;
        assert_eq!(short.status, 0, "{short:?}");
        assert!(short.stderr.contains("warning"), "{short:?}");
        let old = short.stdout.trim_end().to_owned();

        let mut hold = world.emulator.hold_next_answer();
        let refresh = tokio::spawn(world.command(&["refresh", "a"]).output());
        hold.arrived().await;
        assert!(!world.emulator.access_token_is_valid(&old), "rotated");
        let get = tokio::spawn(world.command(&["get", "a", "--min-valid", "24h"]).output());
        let waiting = eventually(Duration::from_secs(20), async || {
            world
                .log()
                .contains("a refresh is in flight; waiting for its token")
        })
        .await;
        assert!(waiting, "the get did not wait\n{}", world.log());
        hold.release();
        let got = get.await.expect("join").expect("tokctl get");
        assert_eq!(got.status.code(), Some(0), "{got:?}");
        let new = String::from_utf8(got.stdout).expect("utf-8");
        assert_ne!(new.trim_end(), old, "served the token the rotation killed");
        assert!(world.emulator.access_token_is_valid(new.trim_end()));
        let refresh = refresh.await.expect("join").expect("tokctl refresh");
        assert_eq!(refresh.status.code(), Some(0), "{refresh:?}");
    })
    .await;
}

/// The provider answered at once, and the new tokens are slow to be
/// written (a keyring behind a confirmation dialog): a `get` waiting for
/// them is not given the held token, which the rotation killed, when the
/// bound runs out; it waits for the write (bounded by the keyring's own
/// timeout, after which the tokens are served from memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_waits_for_the_write_of_tokens_the_provider_already_gave() {
    within(async {
        let mut world = World::start_in(
            crate::support::TokenStore::Keyring,
            Behaviour::django_oauth_toolkit(),
        )
        .await;
        world.login("a").await;
        let old = world.get("a").await;
        let mut hold = world.emulator.hold_next_answer();
        let refresh = tokio::spawn(world.command(&["refresh", "a"]).output());
        hold.arrived().await;
        world.gnome().pause(true);
        hold.release();
        let got = world.tokctl(&["get", "a"]).await;
        world.gnome().pause(false);
        assert_eq!(got.status, 0, "{got:?}\n{}", world.log());
        let token = got.stdout.trim_end();
        assert_ne!(token, old, "the held token, dead since the rotation");
        assert!(world.emulator.access_token_is_valid(token));
        let refresh = refresh.await.expect("join").expect("tokctl refresh");
        assert_eq!(refresh.status.code(), Some(0), "{refresh:?}");
    })
    .await;
}

for_each_store! {
    /// `revoke` tells the provider (refresh token, then access token) and
    /// forgets the tokens where they were kept; a restart remembers none.
    async fn revoke_tells_the_provider_and_forgets_the_tokens(store) {
        within(async {
            let mut world = World::start_in(store, Behaviour::wso2()).await;
            world.login("a").await;
            world.login("b").await;
            let a = world.get("a").await;
            assert!(world.kept_refresh_token("a").await.is_some());
            let out = world.tokctl(&["revoke", "a"]).await;
            assert_eq!(out.status, 0, "{out:?}");
            assert!(out.stdout.is_empty());
            assert!(out.stderr.contains("revoked `a` at the provider"), "{out:?}");
            assert_eq!(
                world.emulator.counters().revoke,
                2,
                "refresh token, then access token"
            );
            assert!(!world.emulator.access_token_is_valid(&a));
            assert_eq!(world.kept_refresh_token("a").await, None, "forgotten");
            assert!(world.stored("a").is_none(), "the state file is removed");
            let get = world.tokctl(&["get", "a"]).await;
            assert_eq!(get.status, 4, "{get:?}");
            assert!(get.stderr.contains("tokctl login a"), "{get:?}");
            let again = world.tokctl(&["revoke", "a"]).await;
            assert_eq!(again.status, 0, "{again:?}");
            assert!(again.stderr.contains("nothing to revoke"), "{again:?}");
            assert!(world.emulator.access_token_is_valid(&world.get("b").await));

            assert!(world.tokd().terminate().success());
            world.start_tokd().await;
            assert_eq!(world.status("a").await["state"], "empty");
            assert_eq!(world.tokctl(&["get", "a"]).await.status, 4);
        })
        .await;
    }
}

/// `config` with installation `b` asking for the scopes `read write`.
pub fn with_b_asking_for_write(config: &str) -> String {
    config.replace(
        "[installations.b]\nconsumer = \"acme\"\nscopes = [\"read\"]",
        "[installations.b]\nconsumer = \"acme\"\nscopes = [\"read\", \"write\"]",
    )
}

for_each_store! {
    /// Reload: unchanged installations keep their tokens without a
    /// request; one whose scopes changed needs a login (and the login
    /// cures it); a new one is empty; an invalid file is refused and the
    /// running config stays; SIGHUP reloads too.
    async fn reload_keeps_unchanged_installations_and_a_scope_change_needs_a_login(store) {
        within(async {
            let world = World::start_in(store, Behaviour::wso2()).await;
            world.login("a").await;
            world.login("b").await;
            let a = world.get("a").await;
            let before = world.emulator.counters();
            let config =
                with_b_asking_for_write(&world.config("\n[installations.c]\nconsumer = \"acme\"\n"));
            world.home.write_config(&config);
            let out = world.tokctl(&["reload"]).await;
            assert_eq!(out.status, 0, "{out:?}");
            assert_eq!(world.get("a").await, a);
            assert_eq!(world.emulator.counters(), before, "no request for `a`");
            let b = world.tokctl(&["get", "b"]).await;
            assert_eq!(b.status, 4, "scopes changed: {b:?}");
            assert!(b.stderr.contains("changed; run `tokctl login b`"), "{b:?}");
            assert_eq!(world.status("c").await["state"], "empty");
            // The sentence, followed: a login with the new scopes.
            world.login("b").await;
            let b = world.get("b").await;
            assert_eq!(
                world.emulator.scopes_of(&b),
                Some(vec!["read".to_owned(), "write".to_owned()])
            );
            world.assert_kept_privately("b", &[&b]).await;

            // An invalid file is refused and the running config stays.
            world
                .home
                .write_config("[installations.x]\nconsumer = \"missing\"\n");
            let out = world.tokctl(&["reload"]).await;
            assert_eq!(out.status, 6, "{out:?}");
            assert!(out.stderr.contains("config.toml"), "{out:?}");
            assert_eq!(world.get("a").await, a);
            assert_eq!(world.tokctl(&["status", "c"]).await.status, 0);
            // SIGHUP reloads too: `c` disappears.
            world.home.write_config(&world.config(""));
            world.tokd.as_ref().expect("tokd").hangup();
            let reloaded = eventually(Duration::from_secs(30), async || {
                world.tokctl(&["status", "c"]).await.status == 3
            })
            .await;
            assert!(reloaded, "SIGHUP did not reload");
            assert_eq!(world.get("a").await, a, "still no request for `a`");
        })
        .await;
    }
}

for_each_store! {
    /// The config changed while tokd was not running: tokens issued for
    /// other scopes are not used, as after a reload, and a login cures it.
    async fn a_restart_after_a_scope_change_needs_a_login_too(store) {
        within(async {
            let mut world = World::start_in(store, Behaviour::wso2()).await;
            world.login("a").await;
            world.login("b").await;
            let a = world.get("a").await;
            assert!(world.tokd().terminate().success());
            world.home.write_config(&with_b_asking_for_write(&world.config("")));
            world.start_tokd().await;
            assert_eq!(world.get("a").await, a, "`a` is unchanged");
            let b = world.tokctl(&["get", "b"]).await;
            assert_eq!(b.status, 4, "{b:?}");
            assert!(b.stderr.contains("changed; run `tokctl login b`"), "{b:?}");
            assert_eq!(world.status("b").await["state"], "needs-login");
            world.login("b").await;
            let token = world.get("b").await;
            assert_eq!(
                world.emulator.scopes_of(&token),
                Some(vec!["read".to_owned(), "write".to_owned()])
            );
        })
        .await;
    }
}

for_each_store! {
    /// A consumer renamed in the config keeps its installations' tokens
    /// (its client, endpoint, grant and scopes are the same), through a
    /// rotation and a restart. (With the keyring, the rotated tokens once
    /// went to a second item beside the old one, which a restart could
    /// read instead: a dead refresh token, a lost grant.)
    async fn a_renamed_consumer_keeps_its_tokens_through_rotation_and_restart(store) {
        within(async {
            let mut world = World::start_in(store, Behaviour::wso2()).await;
            world.login("a").await;
            let renamed = world
                .config("")
                .replace("[consumers.acme]\n", "[consumers.acme2]\n")
                .replace("consumer = \"acme\"\n", "consumer = \"acme2\"\n");
            world.home.write_config(&renamed);
            assert_eq!(world.tokctl(&["reload"]).await.status, 0);
            assert_eq!(world.status("a").await["consumer"], "acme2");
            assert_eq!(world.tokctl(&["refresh", "a"]).await.status, 0);
            let token = world.get("a").await;
            assert!(world.tokd().terminate().success());
            world.start_tokd().await;
            assert_eq!(world.get("a").await, token, "the newest token, kept");
            let out = world.tokctl(&["refresh", "a"]).await;
            assert_eq!(out.status, 0, "{out:?}\n{}", world.log());
            if let Some(gnome) = &world.keyring {
                let items: Vec<_> = gnome
                    .items()
                    .await
                    .into_iter()
                    .filter(|item| item.attributes.get("installation").map(String::as_str) == Some("a"))
                    .collect();
                assert_eq!(items.len(), 1, "one item per installation: {items:?}");
                assert_eq!(items[0].attributes["consumer"], "acme2");
            }
            world.assert_kept_privately("a", &[&token]).await;
        })
        .await;
    }
}

for_each_store! {
    /// A provider outage longer than the token's life: the held token is
    /// served while it lasts, `Retry-After` is honoured, gets during the
    /// backoff do not hit the provider, `get` then fails saying when the
    /// next try is, and once the provider is back tokd recovers with
    /// nobody asking.
    async fn a_provider_outage_is_ridden_out_and_ends_by_itself(store) {
        within_for(Duration::from_secs(120), async {
            let mut behaviour = Behaviour::wso2();
            behaviour.access_lifetime = Duration::from_secs(6);
            let world = World::start_in(store, behaviour).await;
            world.login("a").await;
            let held = token(&world, "a").await;
            world
                .emulator
                .fail_always(Fault::status(503, FaultBody::Html).with_retry_after("20"));
            // The scheduled refresh (due 5 s after the login) fails.
            let failing = eventually(Duration::from_secs(30), async || {
                world.status("a").await["state"] == "failing"
            })
            .await;
            assert!(failing, "{}", world.log());
            let status = world.status("a").await;
            let now = tokd::schedule::unix_seconds(std::time::SystemTime::now());
            let next = status["next_refresh"].as_i64().expect("a next try");
            assert!(next - now >= 15, "Retry-After: 20 is honoured: {status}");
            assert!(
                status["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("tries again in")),
                "{status}"
            );
            assert!(
                status["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("503") && !e.contains("tries again")),
                "the detail, without a wait that goes stale: {status}"
            );

            // While it lasts the held token is served; then get fails with
            // exit 5 and says when tokd tries again.
            let mut last = None;
            let expired = eventually(Duration::from_secs(30), async || {
                let out = world.tokctl(&["get", "a", "--min-valid", "0s"]).await;
                if out.status == 0 {
                    assert_eq!(out.stdout.trim(), held, "{out:?}");
                    false
                } else {
                    last = Some(out);
                    true
                }
            })
            .await;
            assert!(expired);
            let out = last.expect("a failed get");
            assert_eq!(out.status, 5, "{out:?}");
            assert!(out.stdout.is_empty(), "{out:?}");
            assert!(
                out.stderr.contains("the provider is failing") && out.stderr.contains("tries again in"),
                "{out:?}"
            );
            assert_eq!(
                world.emulator.counters().refused,
                1,
                "gets during the backoff did not ask the provider"
            );

            // The provider comes back; nobody asks; tokd recovers by itself.
            world.emulator.clear_faults();
            let recovered = eventually(Duration::from_secs(60), async || {
                world.status("a").await["state"] == "valid"
            })
            .await;
            assert!(recovered, "{}", world.log());
            let fresh = token(&world, "a").await;
            assert_ne!(fresh, held);
            assert!(world.emulator.access_token_is_valid(&fresh));
            world.assert_kept_privately("a", &[&held, &fresh]).await;
        })
        .await;
    }
}

for_each_store! {
    /// A grant revoked at the provider is found lost by the scheduled
    /// refresh with nobody asking; `get` then refuses at once (exit 4) with
    /// the sentence, even while an access token is held; `tokctl login a`,
    /// as the sentence says, brings it back.
    async fn a_lost_grant_needs_a_login_and_a_login_cures_it(store) {
        within(async {
            let mut behaviour = Behaviour::wso2();
            behaviour.access_lifetime = Duration::from_secs(12);
            let world = World::start_in(store, behaviour).await;
            world.login("a").await;
            world.login("b").await;
            let held = token(&world, "a").await;
            let refresh = world.kept_refresh_token("a").await.expect("kept");
            assert!(world.emulator.revoke_grant_of(&refresh));
            let lost = eventually(Duration::from_secs(30), async || {
                world.status("a").await["state"] == "needs-login"
            })
            .await;
            assert!(lost, "{}", world.log());
            let out = world.tokctl(&["get", "a", "--min-valid", "0s"]).await;
            assert_eq!(out.status, 4, "{out:?}");
            assert!(out.stdout.is_empty(), "{out:?}");
            assert!(
                out.stderr.contains("the authorization of `a` is lost")
                    && out.stderr.contains("run `tokctl login a`"),
                "{out:?}"
            );
            assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
            // b's tokens live 12 s, so its scheduled refresh may be under way.
            let b = world.status("b").await;
            assert!(
                matches!(b["state"].as_str(), Some("valid" | "refreshing")),
                "b is untouched: {b}"
            );

            world.login("a").await;
            let fresh = token(&world, "a").await;
            assert_ne!(fresh, held);
            assert!(world.emulator.access_token_is_valid(&fresh));
            let status = world.status("a").await;
            assert_eq!(status["state"], "valid", "{status}");
            assert!(status["next_refresh"].as_i64().is_some(), "{status}");
            world.assert_kept_privately("a", &[&held, &fresh]).await;
        })
        .await;
    }
}

for_each_store! {
    /// A failing provider: a caller asking for more than the held token
    /// gives gets it with one warning line (exit 0); gets during the
    /// backoff do not ask again; a plain get is served without a word.
    async fn a_failing_provider_still_gets_the_held_token_with_a_warning(store) {
        within(async {
            let world = World::start_in(store, Behaviour::wso2()).await;
            world.login("a").await;
            let token = world.get("a").await;
            world
                .emulator
                .fail_always(Fault::status(503, FaultBody::Html));
            for _ in 0..2 {
                let out = world.tokctl(&["get", "a", "--min-valid", "2h"]).await;
                assert_eq!(out.status, 0, "{out:?}");
                assert_eq!(out.stdout, format!("{token}\n"));
                assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
                assert!(out.stderr.starts_with("tokctl: warning: "), "{out:?}");
                assert!(out.stderr.contains("503"), "{out:?}");
            }
            assert_eq!(world.emulator.counters().refused, 1);
            let status = world.status("a").await;
            assert_eq!(status["state"], "failing");
            assert!(status["next_refresh"].as_i64().is_some(), "{status}");
            let plain = world.tokctl(&["get", "a"]).await;
            assert_eq!((plain.status, plain.stderr.as_str()), (0, ""));
            world.assert_kept_privately("a", &[&token]).await;
        })
        .await;
    }
}
