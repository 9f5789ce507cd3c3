//! Every sentence that tells the user what to do, followed literally, and
//! nothing else: the installation recovers.
//!
//! [`CURES`] is the catalogue: each advice, by a fragment of its text, and
//! the test that follows it. The guard test below reads tokd's and
//! tokctl's sources and fails when a sentence that names a cure is not in
//! the catalogue, so a new one comes with its test. Most cures are here;
//! the rest live beside the behaviour they belong to, and the catalogue
//! names them.

use crate::support::{
    World, browse, browser, eventually, for_each_store, query_value, within, within_for,
};
use std::time::Duration;
use tokd_testkit::{Behaviour, Fault, FaultBody, WellKnown};

/// Each advice tokd or tokctl gives (a fragment of its text as written in
/// the source) and where a test follows it and sees the recovery. A few
/// cannot be followed here; those say why instead of naming a test.
pub const CURES: &[(&str, &str)] = &[
    // Starting.
    (
        "and run the command again (`tokd --check-config`",
        "systemd::a_tokd_that_cannot_start_says_why_through_tokctl",
    ),
    // Setting up.
    (
        "and run `tokctl add` again",
        "first_hour::tokctl_add_writes_the_config_and_the_login_works",
    ),
    (
        "log in with `tokctl login {name}`",
        "first_hour::tokctl_add_writes_the_config_and_the_login_works",
    ),
    (
        "unlock the keyring and run the command again",
        "first_hour::tokctl_add_keeps_the_secret_in_the_keyring_when_tokens_go_there",
    ),
    // Other programs' credential protocols.
    (
        "git asks `tokctl git-credential {name}` for {remote}, and no other helper",
        "git::git_setup_keeps_the_token_from_general_helpers_before_and_after",
    ),
    (
        "add `provideClusterInfo: true` to the exec section",
        "clients::kubectl_gets_its_token_from_the_exec_plugin",
    ),
    (
        "to `kube_servers` in [installations.{name}] and run `tokctl reload`",
        "clients::kubectl_gets_its_token_from_the_exec_plugin",
    ),
    (
        "to `registries` in [installations.{name}] and run `tokctl reload`",
        "clients::cargo_fetches_from_a_registry_that_requires_auth",
    ),
    // Logins.
    (
        "has no token yet; run `tokctl login",
        "cures::a_login_cures_an_installation_never_logged_in",
    ),
    (
        "is not logged in; run `tokctl login",
        "cures::a_login_cures_an_installation_never_logged_in",
    ),
    (
        "is lost; run `tokctl login",
        "promises::a_lost_grant_needs_a_login_and_a_login_cures_it",
    ),
    (
        "is lost ({detail}); run `tokctl login",
        "promises::a_lost_grant_needs_a_login_and_a_login_cures_it",
    ),
    (
        "changed; run `tokctl login",
        "promises::reload_keeps_unchanged_installations_and_a_scope_change_needs_a_login",
    ),
    (
        "if the next try is refused, log",
        "hardening::a_refresh_given_up_on_says_the_grant_may_be_lost",
    ),
    (
        "format!(\"{moved}; {what_to_do}\")",
        "cures::a_state_file_moved_aside_is_cured_by_a_login",
    ),
    (
        "run `tokctl login {name}` again\"",
        "cures::logins_refused_or_cut_short_are_cured_by_logging_in_again",
    ),
    (
        "Run `tokctl login NAME` again.",
        "cures::logins_refused_or_cut_short_are_cured_by_logging_in_again",
    ),
    (
        "({detail}); run `tokctl login {name}` again",
        "cures::logins_refused_or_cut_short_are_cured_by_logging_in_again",
    ),
    (
        "({}); run `tokctl login {name}` again",
        "cures::logins_refused_or_cut_short_are_cured_by_logging_in_again",
    ),
    (
        "try again with the same code in a moment",
        "cures::logins_refused_or_cut_short_are_cured_by_logging_in_again",
    ),
    (
        "fix the config, `tokctl reload`, and log in again",
        "cures::logins_refused_or_cut_short_are_cured_by_logging_in_again",
    ),
    (
        "tokd went away during the login",
        "cures::logins_refused_or_cut_short_are_cured_by_logging_in_again",
    ),
    (
        "free that port and run `tokctl login",
        "cures::a_taken_port_freed_lets_the_login_start",
    ),
    (
        "then run `tokctl login {name} --code CODE`",
        "e2e::login_with_a_code_copied_by_hand",
    ),
    (
        "no answer from {from} within",
        "first_hour::tokctl_and_tokd_give_up_on_a_login_together",
    ),
    (
        "use --timeout {} or less",
        "first_hour::tokctl_and_tokd_give_up_on_a_login_together",
    ),
    (
        "ask for {} or less",
        "first_hour::tokctl_and_tokd_give_up_on_a_login_together",
    ),
    (
        "logs in with the device flow: `tokctl login {name} --device`",
        "logins::slow_down_lengthens_the_interval_and_a_refusal_or_the_expiry_ends_the_login",
    ),
    (
        "run `tokctl login {name} --device` again",
        "logins::slow_down_lengthens_the_interval_and_a_refusal_or_the_expiry_ends_the_login",
    ),
    (
        "has no device_url; add it",
        "cures::usage_sentences_followed_work",
    ),
    (
        "needs no login; `tokctl refresh {name}` requests a new token",
        "e2e::client_credentials_are_requested_on_first_get_and_then_held",
    ),
    (
        "{name}: log in again",
        "notify::one_notification_per_episode_and_its_action_logs_in",
    ),
    (
        "cannot open the browser; run `tokctl login",
        "cures::a_login_cures_an_installation_never_logged_in",
    ),
    // The config.
    (
        "fix the config and run `tokctl reload`",
        "cures::a_consumer_fixed_and_reloaded_works_again",
    ),
    (
        "replace `issuer` with token_url and auth_url",
        "cures::a_discovery_document_fixed_and_reloaded_is_fetched_again",
    ),
    (
        "fix the file and reload again",
        "promises::reload_keeps_unchanged_installations_and_a_scope_change_needs_a_login",
    ),
    (
        "add one to {path}",
        "e2e::without_a_config_file_tokd_serves_nothing_until_reload",
    ),
    (
        "until it exists and `tokctl reload` runs",
        "e2e::without_a_config_file_tokd_serves_nothing_until_reload",
    ),
    (
        "run `chmod 600",
        "check_config::warnings_that_name_a_fix_go_once_it_is_made",
    ),
    (
        "keep one",
        "config::tests::errors_that_name_a_fix_go_once_it_is_made (unit test)",
    ),
    (
        "add a [consumers.{consumer_name}] table",
        "config::tests::errors_that_name_a_fix_go_once_it_is_made (unit test)",
    ),
    (
        "add the client id the provider gave you",
        "config::tests::errors_that_name_a_fix_go_once_it_is_made (unit test)",
    ),
    (
        "add the host to `git_hosts`",
        "cures::usage_sentences_followed_work",
    ),
    (
        "started without a config file; restart it instead",
        "not reachable by users: the tokd binary always has a config path; only an in-process daemon (tests, the benchmark) has none",
    ),
    // The provider and the network.
    (
        "tokd retries slowly: check the URL",
        "cures::a_non_oauth_answer_is_retried_at_once_by_tokctl_refresh",
    ),
    (
        "the tokens are kept, try again later",
        "cures::a_revocation_refused_or_cut_short_is_finished_by_revoking_again",
    ),
    (
        "and none could be requested; see `tokctl status",
        "not reachable in practice: a client-credentials request that succeeds always brings a token",
    ),
    // Where tokens are kept.
    (
        "free space or fix the state folder",
        "failures::a_state_write_that_fails_keeps_the_tokens_in_memory_and_is_retried",
    ),
    (
        "=> \"unlock the keyring\"",
        "keyring::a_keyring_that_locks_mid_refresh_keeps_the_new_tokens_in_memory_until_it_can_write",
    ),
    (
        "\"start the keyring (GNOME Keyring",
        "cures::a_keyring_gone_mid_refresh_keeps_the_tokens_until_it_is_started",
    ),
    (
        "is locked; unlock it",
        "keyring::a_locked_keyring_locks_the_installation_serves_held_tokens_and_writes_nothing",
    ),
    (
        "are kept there; start it",
        "keyring::a_keyring_gone_or_locked_at_start_is_waited_for_without_a_plaintext_fallback",
    ),
    (
        "unlock or start the keyring and revoke again",
        "cures::a_revocation_refused_or_cut_short_is_finished_by_revoking_again",
    ),
    (
        "create one or set one as the default",
        "cures::a_keyring_without_a_default_is_used_once_one_is_set",
    ),
    (
        "the keyring is still locked: the unlock dialog was dismissed",
        "not advice: a log line saying what happened; tokd asks again by itself",
    ),
    (
        "asked the desktop to unlock the keyring",
        "not advice: a log line saying what tokd did",
    ),
    (
        "cannot be set to 600",
        "hardening::planted_or_unfixable_state_files_are_not_served (as root: chattr)",
    ),
    (
        "upgrade tokd",
        "not followable here: no newer tokd exists; store::tests show the file is left untouched for it",
    ),
    // tokd itself.
    (
        "run the command again in a moment",
        "failures::sigterm_lets_a_refresh_in_flight_finish_and_write_the_rotated_token",
    ),
    (
        "use --timeout to wait longer",
        "cures::usage_sentences_followed_work",
    ),
    (
        "start it with `systemctl --user start tokd`",
        "not followable here: no systemd user manager runs on this machine; the same tokctl finds a tokd started any other way (e2e)",
    ),
    // Usage.
    (
        "`tokctl list` shows the configured ones",
        "cures::usage_sentences_followed_work",
    ),
    (
        "ask for at most 24h",
        "cures::usage_sentences_followed_work",
    ),
    (
        "`tokctl exec bitbucket --env {var} -- COMMAND`",
        "exec::exec_puts_tokens_in_the_environment_and_becomes_the_command",
    ),
    (
        "(`tokctl exec bitbucket -- COMMAND`)",
        "exec::exec_puts_tokens_in_the_environment_and_becomes_the_command",
    ),
    // Who may ask.
    (
        "to allow it, run: tokctl allow {name} {rule}",
        "callers::a_caller_the_policy_does_not_name_gets_nothing_until_the_sentence_is_followed",
    ),
    (
        "`tokctl disallow {name} {rule}` takes it back",
        "callers::a_caller_the_policy_does_not_name_gets_nothing_until_the_sentence_is_followed",
    ),
    (
        "only `callers = [\\\"any\\\"]` in its config lets such a caller in",
        "callers::policy::tests::an_unidentified_caller_gets_in_only_by_any",
    ),
    (
        "run it under a systemd unit and allow that unit (tokctl allow {name} unit:NAME.service)",
        "callers::units_and_flatpak_apps_are_told_apart",
    ),
    (
        "take one back first (`tokctl callers {name}` lists them)",
        "callers::a_caller_the_policy_does_not_name_gets_nothing_until_the_sentence_is_followed",
    ),
    (
        "(`tokctl status NAME` says for each)",
        "not advice: a log line pointing at where to look",
    ),
];

/// Phrases that mark a sentence telling the user what to do.
const MARKERS: &[&str] = &[
    "run `",
    "run: tokctl",
    "run tokctl",
    "`tokctl ",
    "fix the",
    "unlock",
    "start it",
    "start the keyring",
    "free space",
    "free that port",
    "try again",
    "again later",
    "revoke again",
    "log in again",
    "upgrade tokd",
    "add it",
    "add one",
    "add a [",
    "add the",
    "replace `issuer`",
    "chmod",
    "--timeout",
    "systemctl",
    "create one",
    "keep one",
    "check the URL",
    "ask for",
    "restart it",
];

/// Every line of product code (not tests) with a marker in a string.
fn advice_lines() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    for dir in ["daemon/src", "ctl/src"] {
        for (path, text) in crate::support::everything_in(&root.join(dir)) {
            let file = path.to_string_lossy().into_owned();
            if !file.ends_with(".rs") || file.ends_with("tests.rs") || file.contains("/tests/") {
                continue;
            }
            // A file's own tests come after its `#[cfg(test)]`.
            let product = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
            for line in product.lines() {
                let code = line.trim_start();
                if code.starts_with("//") || !code.contains('"') {
                    continue;
                }
                if MARKERS.iter().any(|marker| code.contains(marker)) {
                    found.push((file.clone(), code.to_owned()));
                }
            }
        }
    }
    found
}

#[test]
fn every_sentence_that_names_a_cure_is_in_the_catalogue() {
    let lines = advice_lines();
    assert!(lines.len() > 40, "the scan found {} lines", lines.len());
    let missing: Vec<String> = lines
        .iter()
        .filter(|(_, line)| !CURES.iter().any(|(fragment, _)| line.contains(fragment)))
        .map(|(file, line)| format!("{file}: {line}"))
        .collect();
    assert!(
        missing.is_empty(),
        "sentences that tell the user what to do, without a test that follows them (add each to CURES with its test):\n{}",
        missing.join("\n")
    );
    // Every fragment is still said somewhere, and every named test exists.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sources: String = ["daemon/src", "ctl/src"]
        .iter()
        .flat_map(|dir| crate::support::everything_in(&root.join(dir)))
        .map(|(_, text)| text)
        .collect();
    let tests: String = crate::support::everything_in(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it"
    )))
    .into_iter()
    .chain(crate::support::everything_in(std::path::Path::new(
        concat!(env!("CARGO_MANIFEST_DIR"), "/src"),
    )))
    .map(|(_, text)| text)
    .collect();
    for (fragment, shown_by) in CURES {
        assert!(
            sources.contains(fragment),
            "the catalogue names a sentence no source line says any more: {fragment:?}"
        );
        if shown_by.starts_with("not ") {
            continue;
        }
        let test = shown_by
            .split_whitespace()
            .next()
            .and_then(|path| path.rsplit("::").next())
            .expect("a test name");
        assert!(
            tests.contains(&format!("fn {test}")) || tests.contains(&format!("async fn {test}(")),
            "the catalogue names a test that does not exist: {shown_by}"
        );
    }
}

/// A token for `name` that needs to last only a second.
async fn token(world: &World, name: &str) -> String {
    world.get_with(name, &["--min-valid", "1s"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_cures_an_installation_never_logged_in() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let out = world.tokctl(&["get", "a"]).await;
        assert_eq!(out.status, 4, "{out:?}");
        assert!(out.stderr.contains("run `tokctl login a`"), "{out:?}");
        let status = world.status("a").await;
        assert!(
            status["message"]
                .as_str()
                .is_some_and(|m| m.contains("is not logged in; run `tokctl login a`")),
            "{status}"
        );
        world.login("a").await;
        let token = world.get("a").await;
        assert!(world.emulator.access_token_is_valid(&token));
    })
    .await;
}

for_each_store! {
    /// "Consumer `acme` is misconfigured (…); fix the config and run
    /// `tokctl reload`": a secret file moved away and put back, and a
    /// secret changed at the provider and then in the file the config
    /// names; each time `tokctl reload` as told, and nothing else, brings
    /// the installation back. (Before, a reload kept the misconfigured
    /// state until `tokctl refresh`.)
    async fn a_consumer_fixed_and_reloaded_works_again(store) {
        within_for(Duration::from_secs(90), async {
            let mut behaviour = Behaviour::wso2();
            behaviour.access_lifetime = Duration::from_secs(12);
            let world = World::start_in(store, behaviour).await;
            world.login("a").await;
            let held = token(&world, "a").await;
            let secret = world.home.path().join("acme.secret");
            let away = world.home.path().join("acme.secret.away");
            std::fs::rename(&secret, &away).expect("move the secret away");
            // The scheduled refresh (about 6 s after the login) finds no
            // secret.
            let refused = eventually(Duration::from_secs(30), async || {
                world.status("a").await["state"] == "misconfigured"
            })
            .await;
            assert!(refused, "{}", world.log());
            let out = world.tokctl(&["get", "a", "--min-valid", "30s"]).await;
            assert_eq!(out.status, 6, "{out:?}");
            assert!(
                out.stderr.contains("consumer `acme` is misconfigured")
                    && out.stderr.contains("acme.secret")
                    && out.stderr.contains("fix the config and run `tokctl reload`"),
                "{out:?}"
            );
            std::fs::rename(&away, &secret).expect("put it back");
            let reload = world.tokctl(&["reload"]).await;
            assert_eq!(reload.status, 0, "{reload:?}");
            // Nobody asks: the schedule takes it up again by itself.
            let back = eventually(Duration::from_secs(30), async || {
                let status = world.status("a").await;
                status["state"] == "valid" && world.emulator.counters().refresh_token > 0
            })
            .await;
            assert!(back, "{}", world.log());
            let fresh = token(&world, "a").await;
            assert_ne!(fresh, held);
            assert!(world.emulator.access_token_is_valid(&fresh));

            // The provider now wants another secret: the client is refused.
            world.emulator.register_client(crate::support::CLIENT_ID, "the new secret");
            let out = world.tokctl(&["refresh", "bot"]).await;
            assert_eq!(out.status, 6, "{out:?}");
            assert!(
                out.stderr.contains("invalid_client")
                    && out.stderr.contains("fix the config and run `tokctl reload`"),
                "{out:?}"
            );
            std::fs::write(&secret, "the new secret").expect("fix the secret");
            let reload = world.tokctl(&["reload"]).await;
            assert_eq!(reload.status, 0, "{reload:?}");
            let bot = token(&world, "bot").await;
            assert!(world.emulator.access_token_is_valid(&bot));
            world.assert_kept_privately("a", &[&held, &fresh]).await;
        })
        .await;
    }
}

/// A consumer whose endpoints are `endpoints` (an `issuer`, or URLs) and
/// a client-credentials installation `xbot`.
fn discovered(world: &World, endpoints: &str) -> String {
    let secret = world.home.write_secret("id.secret", crate::support::SECRET);
    world.config(&format!(
        r#"
[consumers.id]
{endpoints}
client_id = "{}"
client_secret_file = "{}"

[installations.xbot]
consumer = "id"
grant = "client_credentials"
"#,
        crate::support::CLIENT_ID,
        secret.display(),
    ))
}

/// A provider's discovery document that tokd refuses, then fixed:
/// "fix the config and run `tokctl reload`" fetches it again. A provider
/// without one: "replace `issuer` with token_url and auth_url", done,
/// works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_document_fixed_and_reloaded_is_fetched_again() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let issuer = format!("issuer = \"{}\"", world.emulator.issuer());
        world.home.write_config(&discovered(&world, &issuer));
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        world.emulator.set_well_known(WellKnown {
            issuer: Some("https://evil.example".to_owned()),
            ..WellKnown::default()
        });
        let out = world.tokctl(&["get", "xbot"]).await;
        assert_eq!(out.status, 6, "{out:?}");
        assert!(
            out.stderr.contains("refusing it")
                && out
                    .stderr
                    .contains("fix the config and run `tokctl reload`"),
            "{out:?}"
        );
        // The provider fixes its document; the reload, as told, is what
        // tokd needs.
        world.emulator.set_well_known(WellKnown::default());
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        let token = world.get("xbot").await;
        assert!(world.emulator.access_token_is_valid(&token));

        // No document at all.
        world.emulator.set_well_known(WellKnown {
            rfc8414: false,
            openid: false,
            issuer: None,
        });
        std::fs::remove_file(world.home.state_dir().join("discovery/id.json")).expect("forget");
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        let out = world.tokctl(&["refresh", "xbot"]).await;
        assert_eq!(out.status, 6, "{out:?}");
        assert!(
            out.stderr
                .contains("replace `issuer` with token_url and auth_url"),
            "{out:?}"
        );
        let urls = format!(
            "token_url = \"{}\"\nauth_url = \"{}\"\n",
            world.emulator.token_url(),
            world.emulator.auth_url()
        );
        world.home.write_config(&discovered(&world, &urls));
        let reload = world.tokctl(&["reload"]).await;
        assert_eq!(reload.status, 0, "{reload:?}");
        let out = world.tokctl(&["refresh", "xbot"]).await;
        assert_eq!(out.status, 0, "{out:?}");
        assert!(
            world
                .emulator
                .access_token_is_valid(&world.get("xbot").await)
        );
    })
    .await;
}

/// Something between tokd and the provider answers 403 with a page:
/// tokd retries slowly and says to check the URL; once the network is
/// fixed, `tokctl refresh NAME` (the README's advice) retries at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_oauth_answer_is_retried_at_once_by_tokctl_refresh() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.login("a").await;
        world
            .emulator
            .fail_always(Fault::status(403, FaultBody::Html));
        let out = world.tokctl(&["refresh", "a"]).await;
        assert_eq!(out.status, 5, "{out:?}");
        assert!(out.stderr.contains("check the URL"), "{out:?}");
        world.emulator.clear_faults();
        let out = world.tokctl(&["refresh", "a"]).await;
        assert_eq!(out.status, 0, "{out:?}");
        assert_eq!(world.status("a").await["state"], "valid");
    })
    .await;
}

/// The keyring daemon goes away between the provider's answer and its
/// write: the new tokens are held in memory, served, and the state says
/// "start the keyring"; starting it, and nothing else, writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyring_gone_mid_refresh_keeps_the_tokens_until_it_is_started() {
    within(async {
        let mut world =
            World::start_in(crate::support::TokenStore::Keyring, Behaviour::wso2()).await;
        world.login("a").await;
        let mut hold = world.emulator.hold_next_answer();
        let refresh = tokio::spawn(world.command(&["refresh", "a"]).output());
        hold.arrived().await;
        world.gnome().stop();
        hold.release();
        let refresh = refresh.await.expect("join").expect("tokctl");
        assert_eq!(refresh.status.code(), Some(0), "{refresh:?}");
        let status = world.status("a").await;
        assert!(
            status["message"].as_str().is_some_and(
                |m| m.contains("held in memory only") && m.contains("start the keyring")
            ),
            "{status}"
        );
        let served = world.get("a").await;
        assert!(world.emulator.access_token_is_valid(&served));
        world.gnome().restart().await;
        let written = eventually(Duration::from_secs(40), async || {
            world.status("a").await["message"].is_null()
        })
        .await;
        assert!(written, "{}", world.log());
        let kept = world.kept_refresh_token("a").await.expect("kept");
        assert!(world.emulator.refresh_token_is_valid(&kept));
        assert_eq!(world.get("a").await, served);
    })
    .await;
}

/// A code typed while the keyring is locked is not sent (its tokens could
/// not be kept); "unlock it … and tokd carries on": unlocked, the same
/// command with the same code logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_typed_while_the_keyring_is_locked_works_once_it_is_unlocked() {
    within(async {
        let mut world =
            World::start_in(crate::support::TokenStore::Keyring, Behaviour::wso2()).await;
        let code = manual_code(&world).await;
        world.gnome().lock().await;
        let out = world.tokctl(&["login", "m", "--code", &code]).await;
        assert_eq!(out.status, 8, "{out:?}");
        assert!(out.stderr.contains("is locked; unlock it"), "{out:?}");
        world.gnome().unlock().await;
        let out = world.tokctl(&["login", "m", "--code", &code]).await;
        assert_eq!(out.status, 0, "the same code: {out:?}\n{}", world.log());
        assert!(world.emulator.access_token_is_valid(&world.get("m").await));
    })
    .await;
}

/// A browser login while the keyring is locked is refused before the user
/// goes through the provider's pages; one the keyring locks under comes
/// back to tokctl at once (not after its wait for the browser). Unlocked,
/// as the sentence says, a login works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_while_the_keyring_is_locked_is_refused_at_once_and_works_once_unlocked() {
    within(async {
        let mut world =
            World::start_in(crate::support::TokenStore::Keyring, Behaviour::wso2()).await;
        world.gnome().lock().await;
        let out = world.tokctl(&["login", "a", "--no-browser"]).await;
        assert_eq!(out.status, 8, "{out:?}");
        assert!(out.stdout.is_empty(), "no URL to open: {out:?}");
        assert!(out.stderr.contains("is locked; unlock it"), "{out:?}");
        world.gnome().unlock().await;

        // Locked after the login began: the browser's answer is refused
        // and tokctl hears so.
        let (child, url) = world.begin_login("a").await;
        world.gnome().lock().await;
        let location = browse(&url).await;
        let page = browser()
            .get(&location)
            .send()
            .await
            .expect("the listener answers")
            .text()
            .await
            .expect("a page");
        assert!(page.contains("is locked; unlock it"), "{page}");
        let output = child.wait_with_output().await.expect("tokctl ends");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_ne!(output.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("is locked; unlock it"), "{stderr}");
        assert!(!stderr.contains("no answer from the browser"), "{stderr}");

        world.gnome().unlock().await;
        world.login("a").await;
        assert!(world.emulator.access_token_is_valid(&world.get("a").await));
    })
    .await;
}

/// A Secret Service without a default keyring: tokd says to create one or
/// set one as the default; once one is, the installation carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyring_without_a_default_is_used_once_one_is_set() {
    within(async {
        let mut world =
            World::start_in(crate::support::TokenStore::Keyring, Behaviour::wso2()).await;
        world.login("a").await;
        world.gnome().set_default(false).await;
        let out = world.tokctl(&["refresh", "a"]).await;
        assert_eq!(out.status, 8, "{out:?}");
        assert!(
            out.stderr.contains("create one or set one as the default"),
            "{out:?}"
        );
        world.gnome().set_default(true).await;
        let out = world.tokctl(&["refresh", "a"]).await;
        assert_eq!(out.status, 0, "{out:?}\n{}", world.log());
        assert_eq!(world.status("a").await["state"], "valid");
    })
    .await;
}

/// "Try again later" after a refused revocation, and "unlock or start the
/// keyring and revoke again" after a keyring gone mid-revocation: revoking
/// again finishes each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_refused_or_cut_short_is_finished_by_revoking_again() {
    within(async {
        let mut world =
            World::start_in(crate::support::TokenStore::Keyring, Behaviour::wso2()).await;
        world.login("a").await;
        world.login("b").await;
        world
            .emulator
            .fail_next(1, Fault::status(503, FaultBody::Html));
        let out = world.tokctl(&["revoke", "a"]).await;
        assert_eq!(out.status, 5, "{out:?}");
        assert!(out.stderr.contains("try again later"), "{out:?}");
        assert!(world.kept_refresh_token("a").await.is_some(), "kept");
        let out = world.tokctl(&["revoke", "a"]).await;
        assert_eq!(out.status, 0, "{out:?}");
        assert_eq!(world.kept_refresh_token("a").await, None);

        let mut hold = world.emulator.hold_next();
        let revoke = tokio::spawn(world.command(&["revoke", "b"]).output());
        hold.arrived().await;
        world.gnome().stop();
        hold.release();
        let out = revoke.await.expect("join").expect("tokctl");
        assert_eq!(out.status.code(), Some(8), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("unlock or start the keyring and revoke again"),
            "{stderr}"
        );
        world.gnome().restart().await;
        assert!(
            world.kept_refresh_token("b").await.is_some(),
            "not deleted yet"
        );
        let out = world.tokctl(&["revoke", "b"]).await;
        assert_eq!(out.status, 0, "{out:?}\n{}", world.log());
        assert_eq!(world.kept_refresh_token("b").await, None, "deleted");
        assert_eq!(world.tokctl(&["get", "b"]).await.status, 4);
    })
    .await;
}

/// Another program holds the redirect's port: the login refuses to start
/// and says to free it; freed, the login runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_freed_lets_the_login_start() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let squatter = std::net::TcpListener::bind(("127.0.0.1", world.port)).expect("bind");
        let out = world.tokctl(&["login", "a", "--no-browser"]).await;
        assert_eq!(out.status, 6, "{out:?}");
        assert!(
            out.stderr
                .contains("free that port and run `tokctl login a` again"),
            "{out:?}"
        );
        drop(squatter);
        world.login("a").await;
        assert!(world.emulator.access_token_is_valid(&world.get("a").await));
    })
    .await;
}

/// A state file that cannot be parsed is moved aside, and the sentence
/// says to log in; the login cures it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_moved_aside_is_cured_by_a_login() {
    within(async {
        let mut world = World::start(Behaviour::wso2()).await;
        world.login("a").await;
        assert!(world.tokd().terminate().success());
        std::fs::write(world.home.state_dir().join("a.json"), "{ torn").expect("damage");
        world.start_tokd().await;
        let out = world.tokctl(&["get", "a"]).await;
        assert_eq!(out.status, 4, "{out:?}");
        let message = world.status("a").await["message"].clone();
        assert!(
            message
                .as_str()
                .is_some_and(|m| m.contains("was moved to") && m.contains("run `tokctl login a`")),
            "{message}"
        );
        world.login("a").await;
        assert!(world.emulator.access_token_is_valid(&world.get("a").await));
    })
    .await;
}

/// The login sentences that say "again": each followed, the login works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_refused_or_cut_short_are_cured_by_logging_in_again() {
    within_for(Duration::from_secs(90), async {
        let mut world = World::start(Behaviour::wso2()).await;

        // A code used twice: "run `tokctl login m` again".
        let code = manual_code(&world).await;
        assert_eq!(
            world.tokctl(&["login", "m", "--code", &code]).await.status,
            0
        );
        let again = world.tokctl(&["login", "m", "--code", &code]).await;
        assert_eq!(again.status, 4, "{again:?}");
        assert!(
            again.stderr.contains("run `tokctl login m` again"),
            "{again:?}"
        );
        let code = manual_code(&world).await;
        assert_eq!(
            world.tokctl(&["login", "m", "--code", &code]).await.status,
            0
        );

        // The provider fails while the code is exchanged: "try again".
        let code = manual_code(&world).await;
        world
            .emulator
            .fail_next(1, Fault::status(503, FaultBody::Html));
        let out = world.tokctl(&["login", "m", "--code", &code]).await;
        assert_eq!(out.status, 5, "{out:?}");
        assert!(
            out.stderr
                .contains("try again with the same code in a moment"),
            "{out:?}"
        );
        let out = world.tokctl(&["login", "m", "--code", &code]).await;
        assert_eq!(out.status, 0, "the same code, again: {out:?}");

        // The provider refuses the client at the login: "fix the config,
        // `tokctl reload`, and log in again".
        world
            .emulator
            .register_client(crate::support::CLIENT_ID, "the new secret");
        let code = manual_code(&world).await;
        let out = world.tokctl(&["login", "m", "--code", &code]).await;
        assert_eq!(out.status, 6, "{out:?}");
        assert!(
            out.stderr
                .contains("fix the config, `tokctl reload`, and log in again"),
            "{out:?}"
        );
        std::fs::write(world.home.path().join("acme.secret"), "the new secret").expect("fix");
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        let code = manual_code(&world).await;
        assert_eq!(
            world.tokctl(&["login", "m", "--code", &code]).await.status,
            0
        );

        // The browser comes back with an error, or with an answer tokd
        // does not know: each says "again", and a new login works.
        let (child, url) = world.begin_login("a").await;
        let state = query_value(&url, "state");
        let page = callback(&world, "state=not-a-state&code=x").await;
        assert!(
            page.contains("unknown, already used or expired. Run `tokctl login NAME` again."),
            "{page}"
        );
        let _ = callback(&world, &format!("state={state}&error=access_denied")).await;
        let output = child.wait_with_output().await.expect("tokctl ends");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("the provider refused the login of `a` (access_denied")
                && stderr.contains("run `tokctl login a` again"),
            "{stderr}"
        );
        world.login("a").await;

        // tokd goes away during a login: tokctl says so at once, and a new
        // login (with a new tokd) works.
        let (child, _url) = world.begin_login("b").await;
        world.tokd().kill();
        let output = child.wait_with_output().await.expect("tokctl ends");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(7), "{stderr}");
        assert!(
            stderr.contains("tokd went away during the login; run `tokctl login b` again"),
            "{stderr}"
        );
        world.start_tokd().await;
        world.login("b").await;
        assert!(world.emulator.access_token_is_valid(&world.get("b").await));
    })
    .await;
}

/// A code for installation `m`, whose redirect is not on this machine, as
/// a user copies it from the browser's address bar.
async fn manual_code(world: &World) -> String {
    let out = world.tokctl(&["login", "m", "--no-browser"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    let location = browse(out.stdout.trim()).await;
    query_value(&location, "code")
}

/// What tokd's login listener shows for `query`.
async fn callback(world: &World, query: &str) -> String {
    browser()
        .get(format!("http://127.0.0.1:{}/callback?{query}", world.port))
        .send()
        .await
        .expect("the listener answers")
        .text()
        .await
        .expect("a page")
}

/// Usage sentences: each hint, followed, works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_sentences_followed_work() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.login("a").await;

        // "`tokctl list` shows the configured ones".
        for wrong in ["nosuch", "bad/name"] {
            let out = world.tokctl(&["get", wrong]).await;
            assert!(
                out.stderr
                    .contains("`tokctl list` shows the configured ones"),
                "{out:?}"
            );
        }
        let list = world.tokctl(&["list"]).await;
        assert!(
            list.stdout.lines().any(|line| line.starts_with("a ")),
            "{list:?}"
        );

        // "ask for at most 24h".
        let out = world.tokctl(&["get", "a", "--min-valid", "2d"]).await;
        assert_eq!(out.status, 2, "{out:?}");
        assert!(out.stderr.contains("ask for at most 24h"), "{out:?}");
        let out = world.tokctl(&["get", "a", "--min-valid", "24h"]).await;
        assert_eq!(out.status, 0, "{out:?}");

        // "use --timeout to wait longer".
        world
            .emulator
            .fail_next(1, Fault::slow(Duration::from_secs(3)));
        let out = world.tokctl(&["--timeout", "1s", "refresh", "a"]).await;
        assert_eq!(out.status, 7, "{out:?}");
        assert!(
            out.stderr.contains("use --timeout to wait longer"),
            "{out:?}"
        );
        world.emulator.settled().await;
        world
            .emulator
            .fail_next(1, Fault::slow(Duration::from_secs(3)));
        let out = world.tokctl(&["--timeout", "30s", "refresh", "a"]).await;
        assert_eq!(out.status, 0, "{out:?}");

        // "has no device_url; add it".
        let out = world.tokctl(&["login", "a", "--device"]).await;
        assert_eq!(out.status, 2, "{out:?}");
        assert!(out.stderr.contains("has no device_url; add it"), "{out:?}");
        let with_device = world.config("").replacen(
            "[consumers.acme]\n",
            &format!(
                "[consumers.acme]\ndevice_url = \"{}\"\n",
                world.emulator.device_url()
            ),
            1,
        );
        world.home.write_config(&with_device);
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        let login = crate::logins::start_device_login(&world, &["login", "a", "--device"]).await;
        assert!(world.emulator.decide_device(&login.code, true));
        let (status, stderr) = login.end().await;
        assert_eq!(status, 0, "{stderr}");

        // "add the host to `git_hosts`".
        let ask = "protocol=https\nhost=git.example.com\n\n";
        let out = git_credential(&world, ask).await;
        assert_ne!(out.status.code(), Some(0), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("add the host to `git_hosts`"), "{stderr}");
        let with_host = with_device.replacen(
            "[consumers.acme]\n",
            "[consumers.acme]\ngit_hosts = [\"git.example.com\"]\n",
            1,
        );
        world.home.write_config(&with_host);
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        let out = git_credential(&world, ask).await;
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let password = stdout
            .lines()
            .find_map(|line| line.strip_prefix("password="))
            .expect("a password");
        assert!(world.emulator.access_token_is_valid(password));
    })
    .await;
}

/// `tokctl git-credential a get` with `input` on stdin.
async fn git_credential(world: &World, input: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = world
        .command(&["git-credential", "a", "get"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tokctl git-credential");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).await.expect("write");
    drop(stdin);
    child.wait_with_output().await.expect("tokctl ends")
}
