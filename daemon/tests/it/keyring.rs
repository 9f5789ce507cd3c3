//! The keyring store: tokd's Secret Service client, then the real tokd
//! and tokctl, against a real gnome-keyring-daemon on a private bus:
//! tokens kept there and nowhere in plain text, restarts without a
//! refresh, a locked or vanished keyring (`locked`, held tokens served,
//! nothing written), and moves between the files and the keyring.

use crate::support::{World, eventually, everything_in, within};
use std::time::{Duration, Instant};
use tokd::secret::{AccessToken, RefreshToken};
use tokd::storage::{Kept, Keyring as _, KeyringError, SecretService, Tokens};
use tokd_testkit::{Behaviour, GnomeKeyring, PrivateBus};

fn secrets(name: &str, generation: u32) -> Tokens {
    Tokens {
        installation: name.to_owned(),
        access_token: Some(AccessToken::new(format!("access-{name}-{generation}"))),
        refresh_token: Some(RefreshToken::new(format!("refresh-{name}-{generation}"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_saves_loads_replaces_deletes_and_sees_a_lock() {
    within(async {
        let bus = PrivateBus::start();
        let mut gnome = GnomeKeyring::start(&bus).await;
        let keyring = SecretService::new(bus.connect().await);
        keyring.present().await.expect("present");
        keyring.ready().await.expect("unlocked");

        keyring.write("bb", &secrets("a", 1)).await.expect("save");
        keyring.write("bb", &secrets("b", 1)).await.expect("save");
        let a_item = keyring
            .write("bb", &secrets("a", 2))
            .await
            .expect("replace");
        let a_kept = vec![Kept {
            item: a_item,
            tokens: secrets("a", 2),
        }];
        let items = gnome.items().await;
        assert_eq!(items.len(), 2, "replaced, not added: {items:?}");
        let a = items
            .iter()
            .find(|item| item.attributes.get("installation").map(String::as_str) == Some("a"))
            .expect("a's item");
        assert_eq!(a.label, "tokd: a (bb)");
        assert_eq!(a.attributes["application"], "tokd");
        assert_eq!(a.attributes["consumer"], "bb");
        assert!(a.secret.contains("refresh-a-2"), "the newest tokens");
        assert_eq!(keyring.read("a").await.expect("load"), a_kept);
        assert_eq!(keyring.read("c").await.expect("load"), Vec::new());
        let all = keyring.read_all().await.expect("all");
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].tokens, secrets("b", 1), "by installation: {all:?}");

        gnome.lock().await;
        assert_eq!(keyring.ready().await, Err(KeyringError::Locked));
        assert_eq!(keyring.read("a").await, Err(KeyringError::Locked));

        assert_eq!(
            keyring.write("bb", &secrets("a", 3)).await,
            Err(KeyringError::Locked)
        );
        // No desktop to show the prompt: it ends, and the keyring stays
        // locked.
        let asked = Instant::now();
        assert_eq!(keyring.unlock().await, Ok(false));
        eprintln!("the prompt ended after {:?}", asked.elapsed());
        gnome.unlock().await;
        assert_eq!(keyring.unlock().await, Ok(true));
        assert_eq!(keyring.read("a").await.expect("load"), a_kept);

        keyring.delete("a").await.expect("delete");
        assert_eq!(keyring.read("a").await.expect("load"), Vec::new());
        assert_eq!(gnome.items().await.len(), 1);

        gnome.stop();
        assert_eq!(keyring.present().await, Err(KeyringError::Gone));
        assert_eq!(
            keyring.write("bb", &secrets("b", 2)).await,
            Err(KeyringError::Gone)
        );
        gnome.restart().await;
        let b_item = keyring
            .write("bb", &secrets("b", 2))
            .await
            .expect("a new session after a restart");
        assert_eq!(
            keyring.read("b").await.expect("load"),
            vec![Kept {
                item: b_item,
                tokens: secrets("b", 2)
            }]
        );
    })
    .await;
}

/// Asserts that no file of the state folder holds any of `secrets`.
fn nothing_secret_in_the_state_folder(world: &World, secrets: &[&str]) {
    for (path, text) in everything_in(&world.home.state_dir()) {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{} holds a token in plain text",
                path.display()
            );
        }
    }
}

/// The refresh token the keyring keeps for `name`.
async fn kept_refresh_token(gnome: &GnomeKeyring, name: &str) -> Option<String> {
    gnome
        .items()
        .await
        .into_iter()
        .find(|item| item.attributes.get("installation").map(String::as_str) == Some(name))
        .and_then(|item| {
            let secret: serde_json::Value = serde_json::from_str(&item.secret).ok()?;
            secret["refresh_token"].as_str().map(str::to_owned)
        })
}

/// A world whose session has a keyring before tokd's first start (so
/// tokd chooses it), with `a` logged in.
async fn keyring_world() -> (World, GnomeKeyring) {
    let mut world = World::prepare(Behaviour::wso2()).await;
    let gnome = GnomeKeyring::start(&world.bus).await;
    world.start_tokd().await;
    world.login("a").await;
    (world, gnome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_keyring_on_the_bus_tokens_live_there_and_survive_a_restart() {
    within(async {
        let (mut world, gnome) = keyring_world().await;
        assert!(
            world.log().contains("tokens are kept in the keyring"),
            "the default, said in the log\n{}",
            world.log()
        );
        let token = world.get("a").await;
        let refresh = kept_refresh_token(&gnome, "a").await.expect("a's item");
        let items = gnome.items().await;
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0].label, "tokd: a (acme)");
        assert_eq!(items[0].attributes["consumer"], "acme");
        nothing_secret_in_the_state_folder(&world, &[&token, &refresh]);
        let status = world.status("a").await;
        assert_eq!(status["tokens_in"], "keyring", "{status}");
        assert_eq!(
            world.status("b").await["tokens_in"],
            serde_json::Value::Null
        );
        let text = world.tokctl(&["status", "a"]).await.stdout;
        assert!(
            text.contains("tokens in     the keyring (Secret Service)"),
            "{text}"
        );

        let refreshes = world.emulator.counters().refresh_token;
        world.tokd = None;
        world.start_tokd().await;
        assert_eq!(
            world.get("a").await,
            token,
            "the same token after a restart"
        );
        assert_eq!(
            world.emulator.counters().refresh_token,
            refreshes,
            "no refresh"
        );

        // A rotation goes to the keyring, and still not to the folder.
        assert_eq!(world.tokctl(&["refresh", "a"]).await.status, 0);
        let rotated = kept_refresh_token(&gnome, "a").await.expect("a's item");
        assert_ne!(rotated, refresh);
        assert!(world.emulator.refresh_token_is_valid(&rotated));
        let newer = world.get("a").await;
        nothing_secret_in_the_state_folder(&world, &[&token, &refresh, &rotated, &newer]);

        // Revoking deletes the item.
        assert_eq!(world.tokctl(&["revoke", "a"]).await.status, 0);
        assert!(gnome.items().await.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_keyring_locks_the_installation_serves_held_tokens_and_writes_nothing() {
    within(async {
        let (world, gnome) = keyring_world().await;
        let token = world.get("a").await;
        let refresh = kept_refresh_token(&gnome, "a").await.expect("item");
        let refreshes = world.emulator.counters().refresh_token;
        gnome.lock().await;

        let out = world.tokctl(&["refresh", "a"]).await;
        assert_eq!(out.status, 8, "{out:?}");
        assert!(out.stderr.contains("is locked; unlock it"), "{out:?}");
        assert!(
            world
                .log()
                .contains("asked the desktop to unlock the keyring"),
            "a caller asked, so tokd asked the desktop\n{}",
            world.log()
        );
        let status = world.status("a").await;
        assert_eq!(status["state"], "locked", "{status}");
        // The held token is served while valid; asked for more than it
        // has left, it comes with a warning rather than a refresh.
        assert_eq!(world.get("a").await, token);
        let long = world.tokctl(&["get", "a", "--min-valid", "23h"]).await;
        assert_eq!(long.status, 0, "{long:?}");
        assert_eq!(long.stdout.trim(), token);
        assert!(
            long.stderr.contains("tokctl: warning:") && long.stderr.contains("locked"),
            "{long:?}"
        );
        assert_eq!(
            world.emulator.counters().refresh_token,
            refreshes,
            "nothing asked of the provider while its answer could not be kept"
        );
        nothing_secret_in_the_state_folder(&world, &[&token, &refresh]);
        // A login is refused before its code is used.
        let login = world.tokctl(&["login", "b", "--code", "x"]).await;
        assert_eq!(login.status, 8, "{login:?}");

        // `b` is locked too (its login was refused).
        let status = world.status("b").await;
        assert_eq!(status["state"], "locked", "{status}");

        gnome.unlock().await;
        let out = world.tokctl(&["refresh", "a"]).await;
        assert_eq!(out.status, 0, "{out:?}\n{}", world.log());
        assert_eq!(world.status("a").await["state"], "valid");
        // The keyring is back: `b` carries on within seconds (it is checked
        // again within the few seconds overdue ones are spread over), not
        // at its own next check, 30 s after it found the keyring locked.
        let status = world.status("b").await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs() as i64;
        match status["next_refresh"].as_i64() {
            Some(next) => assert!(
                next <= now + 6,
                "checked again in {}s: {status}",
                next - now
            ),
            // On a slow machine the check may already have run: `b` has no
            // tokens, so it is then empty (no longer locked) with nothing
            // scheduled.
            None => assert_eq!(status["state"], "empty", "{status}"),
        }
        let rotated = kept_refresh_token(&gnome, "a").await.expect("item");
        assert_ne!(rotated, refresh);
        let newer = world.get("a").await;
        nothing_secret_in_the_state_folder(&world, &[&newer, &rotated]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyring_gone_or_locked_at_start_is_waited_for_without_a_plaintext_fallback() {
    within(async {
        let (mut world, mut gnome) = keyring_world().await;
        let token = world.get("a").await;
        let refresh = kept_refresh_token(&gnome, "a").await.expect("item");
        gnome.stop();
        let out = world.tokctl(&["refresh", "a"]).await;
        assert_eq!(out.status, 8, "{out:?}");
        assert!(
            out.stderr.contains("no keyring (Secret Service) answers")
                && out.stderr.contains("are kept there; start it"),
            "{out:?}"
        );
        assert_eq!(world.get("a").await, token, "the held token, from memory");
        nothing_secret_in_the_state_folder(&world, &[&token, &refresh]);

        // tokd restarts while the keyring is away: locked, no token.
        world.tokd = None;
        world.start_tokd().await;
        assert_eq!(world.status("a").await["state"], "locked");
        assert_eq!(world.tokctl(&["get", "a"]).await.status, 8);
        nothing_secret_in_the_state_folder(&world, &[&token, &refresh]);

        // Started, as the sentence says (unlocked by its password): the
        // next caller carries on, and the schedule holds it again.
        gnome.restart().await;
        assert_eq!(world.get("a").await, token, "read from the keyring");
        let status = world.status("a").await;
        assert_eq!(status["state"], "valid");
        assert!(status["next_refresh"].as_i64().is_some(), "{status}");

        // Locked at start, then unlocked: the same.
        gnome.lock().await;
        world.tokd = None;
        world.start_tokd().await;
        assert_eq!(world.status("a").await["state"], "locked");
        gnome.unlock().await;
        assert_eq!(world.get("a").await, token);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_move_between_the_files_and_the_keyring_without_a_login() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.login("a").await;
        let token = world.get("a").await;
        let refresh = world.stored_refresh_token("a");
        let gnome = GnomeKeyring::start(&world.bus).await;
        let refreshes = world.emulator.counters().refresh_token;

        world
            .home
            .write_config(&world.config("\n[daemon]\nstore = \"keyring\"\n"));
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        assert_eq!(
            kept_refresh_token(&gnome, "a").await.as_deref(),
            Some(refresh.as_str())
        );
        nothing_secret_in_the_state_folder(&world, &[&token, &refresh]);
        assert_eq!(world.status("a").await["tokens_in"], "keyring");
        assert_eq!(world.get("a").await, token);

        world
            .home
            .write_config(&world.config("\n[daemon]\nstore = \"file\"\n"));
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        assert_eq!(world.stored_refresh_token("a"), refresh);
        assert!(
            gnome.items().await.is_empty(),
            "the keyring's copy is deleted"
        );
        assert_eq!(world.status("a").await["tokens_in"], "file");
        assert_eq!(world.get("a").await, token);
        assert_eq!(
            world.emulator.counters().refresh_token,
            refreshes,
            "moved, not refreshed"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_cut_short_is_finished_at_the_next_start() {
    within(async {
        let (mut world, gnome) = keyring_world().await;
        let token = world.get("a").await;
        let refresh = kept_refresh_token(&gnome, "a").await.expect("item");
        let refreshes = world.emulator.counters().refresh_token;
        world.tokd = None;

        // A move to the files that wrote the state file and was killed
        // before it deleted the keyring's item.
        let store = tokd::storage::StateFolder::open(world.home.state_dir()).expect("store");
        let tokd::storage::Loaded::Found(mut record) = store.load("a").expect("load") else {
            panic!("a has a state file");
        };
        assert_eq!(record.store, tokd::storage::Store::Keyring);
        record.store = tokd::storage::Store::File;
        record.access_token = Some(AccessToken::new(token.clone()));
        record.refresh_token = Some(RefreshToken::new(refresh.clone()));
        store.save("a", &record).expect("save");
        world
            .home
            .write_config(&world.config("\n[daemon]\nstore = \"file\"\n"));
        world.start_tokd().await;
        // Moves run once tokd owns its name, beside the first calls.
        assert!(
            eventually(Duration::from_secs(10), async || gnome
                .items()
                .await
                .is_empty())
            .await,
            "the leftover item is deleted"
        );
        assert_eq!(world.get("a").await, token);

        // A move to the keyring that wrote the item and was killed before
        // it rewrote the state file without the tokens.
        world.tokd = None;
        let keyring = SecretService::new(world.bus.connect().await);
        keyring
            .write(
                "acme",
                &Tokens {
                    installation: "a".to_owned(),
                    access_token: Some(AccessToken::new(token.clone())),
                    refresh_token: Some(RefreshToken::new(refresh.clone())),
                },
            )
            .await
            .expect("the item");
        world
            .home
            .write_config(&world.config("\n[daemon]\nstore = \"keyring\"\n"));
        world.start_tokd().await;
        let path = world.home.state_dir().join("a.json");
        assert!(
            eventually(Duration::from_secs(10), async || {
                std::fs::read_to_string(&path).is_ok_and(|text| !text.contains(&refresh))
            })
            .await,
            "the state file is rewritten without the tokens"
        );
        nothing_secret_in_the_state_folder(&world, &[&token, &refresh]);
        assert_eq!(gnome.items().await.len(), 1);
        assert_eq!(world.get("a").await, token);
        assert_eq!(
            world.emulator.counters().refresh_token,
            refreshes,
            "no login, no refresh"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_a_locked_keyring_waits_for_it_and_then_happens() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.login("a").await;
        let gnome = GnomeKeyring::start(&world.bus).await;
        gnome.lock().await;
        world
            .home
            .write_config(&world.config("\n[daemon]\nstore = \"keyring\"\n"));
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        assert_eq!(world.status("a").await["state"], "locked");
        assert_eq!(
            world.status("a").await["tokens_in"],
            "file",
            "not moved yet"
        );
        let token = world.get("a").await;

        gnome.unlock().await;
        let out = world.tokctl(&["refresh", "a"]).await;
        assert_eq!(out.status, 0, "{out:?}\n{}", world.log());
        assert_eq!(world.status("a").await["tokens_in"], "keyring");
        let refresh = kept_refresh_token(&gnome, "a")
            .await
            .expect("moved, then rotated");
        let newer = world.get("a").await;
        nothing_secret_in_the_state_folder(&world, &[&token, &refresh, &newer]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyring_that_locks_mid_refresh_keeps_the_new_tokens_in_memory_until_it_can_write() {
    within(async {
        let (world, gnome) = keyring_world().await;
        let old = world.get("a").await;
        let old_refresh = kept_refresh_token(&gnome, "a").await.expect("item");
        // The keyring locks while the provider is deciding: it has rotated
        // by the time tokd writes.
        let mut hold = world.emulator.hold_next();
        let refresh = world.command(&["refresh", "a"]).output();
        let refresh = tokio::spawn(refresh);
        hold.arrived().await;
        gnome.lock().await;
        hold.release();
        let out = refresh.await.expect("join").expect("tokctl");
        assert!(out.status.success(), "{out:?}");
        assert!(
            !world.emulator.refresh_token_is_valid(&old_refresh),
            "strict rotation: the old refresh token is dead"
        );
        // The new token is served from memory, the state says why, and
        // nothing reached the state folder.
        let new = world.get("a").await;
        assert_ne!(new, old);
        let status = world.status("a").await;
        assert!(
            status["message"].as_str().is_some_and(
                |m| m.contains("held in memory only") && m.ends_with("unlock the keyring")
            ),
            "the state says why and what to do: {status}"
        );
        nothing_secret_in_the_state_folder(&world, &[&new, &old, &old_refresh]);

        // Unlocked: the retried write lands, with the live refresh token.
        // The item is confirmed before the state stops saying "held in
        // memory only", so once the state is clear the item is there.
        gnome.unlock().await;
        assert!(
            eventually(Duration::from_secs(15), async || {
                let status = world.status("a").await;
                status["state"] == "valid" && status["message"].is_null()
            })
            .await,
            "the state said the tokens are written\n{}",
            world.log()
        );
        let kept = kept_refresh_token(&gnome, "a").await;
        assert!(
            kept.is_some_and(|token| world.emulator.refresh_token_is_valid(&token)),
            "the tokens held in memory were written, with the live refresh token\n{}",
            world.log()
        );
    })
    .await;
}

/// Another program (here `secret-tool`) plants an item with tokd's
/// attributes plus one more, newer than tokd's, holding a token of its
/// choosing: tokd serves its own item's token at every start, and warns
/// naming the other item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_item_beside_tokds_own_is_never_served() {
    within(async {
        let (mut world, gnome) = keyring_world().await;
        let token = world.get("a").await;
        let own = gnome
            .items()
            .await
            .into_iter()
            .find(|item| item.attributes.get("installation").map(String::as_str) == Some("a"))
            .expect("a's item");
        let mut planted: serde_json::Value = serde_json::from_str(&own.secret).expect("json");
        let access = planted
            .as_object_mut()
            .and_then(|tokens| {
                tokens
                    .iter_mut()
                    .find(|(_, value)| value.as_str() == Some(token.as_str()))
            })
            .map(|(_, value)| value)
            .expect("the access token in the item");
        *access = "planted-access-token".into();
        // Newer than tokd's own: the Secret Service counts whole seconds,
        // so the planted item is written in a later second.
        let second = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("time")
                .as_secs()
        };
        let written = second();
        while second() <= written {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // One with tokd's attributes and one more; one with exactly tokd's
        // attributes but another installation's name outside; one with
        // exactly tokd's attributes for this installation (under another
        // consumer's name, so that it does not replace tokd's item): only
        // the item tokd recorded in the state file tells it from tokd's own.
        for (installation, consumer, extra) in [
            ("a", "acme", ["planted", "yes"]),
            ("decoy", "acme", ["", ""]),
            ("a", "other", ["", ""]),
        ] {
            let mut args = vec![
                "store",
                "--label",
                "tokd: a (acme)",
                "application",
                "tokd",
                "installation",
                installation,
                "consumer",
                consumer,
            ];
            args.extend(extra.iter().filter(|word| !word.is_empty()));
            let mut store = tokio::process::Command::new("secret-tool")
                .args(&args)
                .envs(world.home.env(&world.bus))
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("secret-tool (Debian: libsecret-tools)");
            use tokio::io::AsyncWriteExt as _;
            let mut stdin = store.stdin.take().expect("stdin");
            stdin
                .write_all(planted.to_string().as_bytes())
                .await
                .expect("the planted secret");
            drop(stdin);
            assert!(store.wait().await.expect("secret-tool").success());
        }
        assert_eq!(gnome.items().await.len(), 4);
        for round in 0..5 {
            assert!(world.tokd().terminate().success());
            world.start_tokd().await;
            let got = world.get("a").await;
            assert_eq!(got, token, "round {round}: the planted token was served");
            assert!(
                world
                    .log()
                    .contains("the keyring holds more than one item for this installation"),
                "{}",
                world.log()
            );
        }
    })
    .await;
}
