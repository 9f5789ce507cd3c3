//! The installation state machine and its due-time rule, without HTTP, a
//! disk or a bus: every input (time, randomness, the provider's answer) is
//! an argument.

use super::*;
use crate::broker::decision::{At, Decision, Got, Want};
use crate::config::Config;
use crate::oauth::OAuthError;
use crate::secret::RefreshToken;
use crate::storage::KeyringError;
use crate::storage::SaveError;
use std::time::UNIX_EPOCH;

const HOUR: Duration = Duration::from_secs(3600);

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

/// Installation `a` (authorization code) or `bot` (client credentials) of
/// consumer `c`; `cron` adds a schedule to both.
fn spec(name: &str, cron: Option<&str>) -> Spec {
    let schedule = cron.map_or(String::new(), |cron| format!("schedule = \"{cron}\"\n"));
    let config = Config::from_str(&format!(
        r#"[consumers.c]
token_url = "https://provider.example/token"
auth_url = "https://provider.example/authorize"
client_id = "id"
client_secret = "secret"

[installations.a]
consumer = "c"
scopes = ["read"]
{schedule}
[installations.bot]
consumer = "c"
grant = "client_credentials"
{schedule}"#
    ))
    .expect("config");
    Spec::new(
        config.installations[name].clone(),
        config.consumers["c"].clone(),
    )
}

/// A record holding a token obtained at `obtained`, living `lifetime`.
fn holding(obtained: SystemTime, lifetime: Duration) -> Record {
    Record {
        access_token: Some(AccessToken::new("access")),
        refresh_token: Some(RefreshToken::new("refresh")),
        expires_at: Some(obtained + lifetime),
        last_refresh: Some(obtained),
        ..Record::default()
    }
}

fn valid(obtained: SystemTime, lifetime: Duration) -> Installation {
    Installation {
        record: holding(obtained, lifetime),
        state: State::Valid,
        unsaved: None,
        deadline: None,
        fell_short_at: None,
        keyring_down: None,
        tokens_unread: false,
    }
}

/// One fixed monotonic moment for the tests that do not move it.
fn mono() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn failure(kind: ErrorKind, message: &str, retry_after: Option<Duration>) -> OAuthError {
    let mut error = OAuthError::new(kind, message.to_owned());
    error.retry_after = retry_after;
    error
}

#[test]
fn loading_sorts_what_the_state_file_held() {
    let a = spec("a", None);
    let found = |record: Record| Installation::loaded(&a, Ok(Loaded::Found(record)));
    assert_eq!(found(holding(at(0), HOUR)).state, State::Valid);
    assert_eq!(
        found(Record::default()).state,
        State::Empty(Empty::Never),
        "a record without an access token"
    );
    assert_eq!(
        Installation::loaded(&a, Ok(Loaded::Missing)).state,
        State::Empty(Empty::Never)
    );
    let moved = Installation::loaded(
        &a,
        Ok(Loaded::MovedAside {
            moved_to: PathBuf::from("/state/a.json.corrupt-1"),
            reason: "truncated".to_owned(),
        }),
    );
    assert_eq!(
        moved.message(&a, at(0)),
        "the state file could not be used (truncated) and was moved to /state/a.json.corrupt-1; `a` is not logged in; run `tokctl login a`"
    );
    let bot = spec("bot", None);
    let moved = Installation::loaded(
        &bot,
        Ok(Loaded::MovedAside {
            moved_to: PathBuf::from("/state/bot.json.corrupt-1"),
            reason: "truncated".to_owned(),
        }),
    );
    assert_eq!(
        moved.message(&bot, at(0)),
        "the state file could not be used (truncated) and was moved to /state/bot.json.corrupt-1",
        "client credentials: nothing to do, and no dangling separator"
    );
    let newer = Installation::loaded(
        &a,
        Err(StateError::NewerFormat {
            path: PathBuf::from("/state/a.json"),
            found: 9,
        }),
    );
    assert_eq!(newer.state.kind(), InstallationState::Misconfigured);
    assert!(
        newer
            .message(&a, at(0))
            .starts_with("cannot load the state file: /state/a.json was written by a newer tokd"),
        "{}",
        newer.message(&a, at(0))
    );
}

#[test]
fn tokens_issued_under_another_identity_are_not_used() {
    let a = spec("a", None);
    let mut record = holding(at(0), HOUR);
    record.issued_for =
        Some("another-client https://elsewhere/token authorization_code read".into());
    let loaded = Installation::loaded(&a, Ok(Loaded::Found(record.clone())));
    assert_eq!(
        loaded.state,
        State::NeedsLogin(LoginNeeded::IdentityChanged)
    );
    assert_eq!(loaded.record, Record::default());
    assert_eq!(
        loaded.message(&a, at(0)),
        "the consumer or scopes of `a` changed; run `tokctl login a`"
    );
    // A client-credentials installation simply asks again.
    let bot = spec("bot", None);
    let loaded = Installation::loaded(&bot, Ok(Loaded::Found(record.clone())));
    assert_eq!(loaded.state, State::Empty(Empty::Never));
    assert_eq!(loaded.message(&bot, at(0)), "");
    // Its own identity is accepted.
    record.issued_for = Some(a.identity());
    assert_eq!(
        Installation::loaded(&a, Ok(Loaded::Found(record))).state,
        State::Valid
    );
}

#[test]
fn a_transient_failure_backs_off_and_the_count_survives_the_next_request() {
    let a = spec("a", None);
    let mut installation = valid(at(0), HOUR);
    installation.begin_request();
    assert_eq!(installation.state, State::Refreshing { failures: 0 });
    let error = installation.failed(
        &a,
        &failure(ErrorKind::Transient, "token endpoint answered 503", None),
        at(100),
        0.0,
    );
    // No jitter: the shortest backoff.
    assert_eq!(
        installation.state,
        State::Failing {
            failures: 1,
            retry_at: at(100) + schedule::MIN_INTERVAL,
            reason: "token endpoint answered 503".into(),
            grant_at_risk: false,
        }
    );
    assert_eq!(
        error,
        Error::ProviderUnavailable(
            "the provider is failing (token endpoint answered 503); tokd tries again in 5s".into()
        )
    );
    // The record keeps the failure; the wait is computed when shown.
    assert_eq!(
        installation.record.last_error.as_deref(),
        Some("token endpoint answered 503")
    );
    assert_eq!(
        installation.summary(&a, at(102)),
        "the provider is failing; tokd tries again in 3s"
    );
    installation.begin_request();
    assert_eq!(installation.state, State::Refreshing { failures: 1 });
    installation.failed(
        &a,
        &failure(ErrorKind::Transient, "503", Some(Duration::from_secs(120))),
        at(200),
        0.0,
    );
    assert!(
        matches!(installation.state, State::Failing { failures: 2, retry_at, .. } if retry_at == at(320)),
        "Retry-After is honoured: {:?}",
        installation.state
    );
    // Success ends the streak and the error.
    installation.begin_request();
    installation.succeeded(holding(at(400), HOUR), None, at(400), mono());
    assert_eq!(installation.state, State::Valid);
    assert_eq!(installation.record.last_error, None);
    installation.begin_request();
    assert_eq!(installation.state, State::Refreshing { failures: 0 });
}

#[test]
fn the_failing_sentence_counts_down_when_it_is_read() {
    let a = spec("a", None);
    let mut installation = valid(at(0), HOUR);
    installation.state = State::Failing {
        failures: 1,
        retry_at: at(40),
        reason: "503".into(),
        grant_at_risk: false,
    };
    let said = |now| installation.message(&a, now);
    assert!(
        said(at(0)).ends_with("tokd tries again in 40s"),
        "{}",
        said(at(0))
    );
    assert!(
        said(at(30)).ends_with("tokd tries again in 10s"),
        "{}",
        said(at(30))
    );
    assert!(
        said(at(99)).ends_with("tokd tries again in 1s"),
        "overdue: {}",
        said(at(99))
    );
}

#[test]
fn permanent_failures_say_what_to_do() {
    let a = spec("a", None);
    let mut installation = valid(at(0), HOUR);
    let error = installation.failed(
        &a,
        &failure(ErrorKind::NeedsLogin, "invalid_grant (revoked)", None),
        at(0),
        0.5,
    );
    assert_eq!(
        error,
        Error::NeedsLogin(
            "the authorization of `a` is lost (invalid_grant (revoked)); run `tokctl login a`"
                .into()
        )
    );
    assert_eq!(installation.refusal(&a, at(1)), Err(error));
    let error = installation.failed(
        &a,
        &failure(ErrorKind::Misconfigured, "invalid_client", None),
        at(0),
        0.5,
    );
    assert_eq!(
        error,
        Error::Misconfigured(
            "consumer `c` is misconfigured (invalid_client); fix the config and run `tokctl reload`"
                .into()
        )
    );
    assert_eq!(installation.refusal(&a, at(1)), Err(error));
}

/// "Fix the config and run `tokctl reload`" must be true: a reload with the
/// identity unchanged lets a refused client try again (and puts it back in
/// the queue: an expired token is due at once); a lost grant stands.
#[test]
fn a_reload_lets_a_misconfigured_installation_try_again_and_nothing_else() {
    let a = spec("a", None);
    let misconfigured = |record: Record| {
        let mut installation = valid(at(0), HOUR);
        installation.record = record;
        installation.failed(
            &a,
            &failure(
                ErrorKind::Misconfigured,
                "cannot read client secret file",
                None,
            ),
            at(0),
            0.5,
        );
        installation
    };
    let mut holding_one = misconfigured(holding(at(0), HOUR));
    assert_eq!(
        holding_one.next_due(&a, None, at(2 * 3600), mono(), 0.0, 0.0),
        None
    );
    holding_one.reconfigured();
    assert_eq!(holding_one.state, State::Valid);
    assert_eq!(holding_one.refusal(&a, at(2 * 3600)), Ok(()));
    assert_eq!(
        holding_one.next_due(&a, None, at(2 * 3600), mono(), 0.0, 0.0),
        Some(at(2 * 3600)),
        "expired: due at once"
    );
    let mut empty = misconfigured(Record::default());
    empty.reconfigured();
    assert_eq!(empty.state, State::Empty(Empty::Never));

    let mut lost = valid(at(0), HOUR);
    lost.failed(
        &a,
        &failure(ErrorKind::NeedsLogin, "invalid_grant", None),
        at(0),
        0.5,
    );
    let before = lost.clone();
    lost.reconfigured();
    assert_eq!(lost, before, "a lost grant needs a login, not a reload");

    let unusable = Installation::loaded(
        &a,
        Err(StateError::NewerFormat {
            path: PathBuf::from("/state/a.json"),
            found: 9,
        }),
    );
    assert!(unusable.state_file_unusable());
    assert!(!holding_one.state_file_unusable());
}

#[test]
fn what_may_ask_the_provider_now() {
    let a = spec("a", None);
    let bot = spec("bot", None);
    let empty = Installation::loaded(&a, Ok(Loaded::Missing));
    assert_eq!(
        empty.refusal(&a, at(0)),
        Err(Error::NeedsLogin(
            "`a` has no token yet; run `tokctl login a`".into()
        ))
    );
    assert!(empty.skips_scheduled(&a, at(0)));
    assert_eq!(
        Installation::loaded(&bot, Ok(Loaded::Missing)).refusal(&bot, at(0)),
        Ok(()),
        "client credentials need no human"
    );
    let mut failing = valid(at(0), HOUR);
    failing.state = State::Failing {
        failures: 1,
        retry_at: at(60),
        reason: "503".into(),
        grant_at_risk: false,
    };
    assert!(matches!(
        failing.refusal(&a, at(10)),
        Err(Error::ProviderUnavailable(_))
    ));
    assert_eq!(failing.refusal(&a, at(60)), Ok(()));
    assert!(
        !failing.skips_scheduled(&a, at(10)),
        "the queue holds the retry time"
    );
}

#[test]
fn an_unsaved_record_says_so_until_a_write_succeeds() {
    let a = spec("a", None);
    let mut installation = valid(at(0), HOUR);
    installation.succeeded(
        holding(at(10), HOUR),
        Some(Unsaved {
            why: "disk full".into(),
            remedy: "free space or fix the state folder",
        }),
        at(10),
        mono(),
    );
    let said = installation.message(&a, at(10));
    assert_eq!(
        said,
        "the new tokens could not be written (disk full); they are held in memory only \
         and tokd keeps trying to write them: free space or fix the state folder"
    );
    assert_eq!(
        installation.record.last_error.as_deref(),
        Some(said.as_str())
    );
    installation.write_retried(Err(crate::broker::keeping::unsaved(&SaveError::State(
        StateError::Interrupted("still full".into()),
    ))));
    assert!(installation.message(&a, at(10)).contains("still full)"));
    installation.write_retried(Err(crate::broker::keeping::unsaved(&SaveError::Keyring(
        KeyringError::Locked,
    ))));
    assert!(
        installation
            .message(&a, at(10))
            .ends_with("(the keyring is locked); they are held in memory only and tokd keeps trying to write them: unlock the keyring"),
        "the remedy fits the store: {}",
        installation.message(&a, at(10))
    );
    installation.write_retried(Ok(()));
    assert_eq!(installation.message(&a, at(10)), "");
    assert_eq!(installation.record.last_error, None);
}

#[test]
fn a_token_is_served_only_while_it_lasts_long_enough() {
    let installation = valid(at(0), HOUR);
    let token = installation
        .token_valid_for(at(0), mono(), Duration::from_secs(60))
        .expect("valid for a minute");
    assert_eq!(token.access_token.expose(), "access");
    assert!(
        installation
            .token_valid_for(at(3590), mono(), Duration::from_secs(60))
            .is_none()
    );
    assert!(
        installation
            .token_valid_for(at(3590), mono(), Duration::ZERO)
            .is_some()
    );
    let warned = token.with_warning(
        at(3000),
        Duration::from_secs(3600),
        "the provider is failing",
    );
    assert_eq!(
        warned.warning.as_deref(),
        Some(
            "this token is valid for 10m only, less than the 1h asked for: the provider is failing"
        )
    );
}

#[test]
fn a_revocation_forgets_everything() {
    let a = spec("a", None);
    let mut installation = valid(at(0), HOUR);
    installation.failed(&a, &failure(ErrorKind::Transient, "503", None), at(0), 0.0);
    installation.revoked();
    assert_eq!(installation, Installation::loaded(&a, Ok(Loaded::Missing)));
}

#[test]
fn renewal_keeps_a_refresh_token_that_did_not_rotate() {
    let a = spec("a", None);
    let before = holding(at(0), HOUR);
    let response = |refresh: Option<&str>| TokenResponse {
        access_token: AccessToken::new("new-access"),
        token_type: "bearer".into(),
        expires_in: None,
        refresh_token: refresh.map(RefreshToken::new),
        scopes: None,
    };
    let kept = renewed(&before, response(None), &a, at(100));
    assert_eq!(kept.refresh_token, before.refresh_token);
    assert_eq!(
        kept.expires_at,
        Some(at(100) + crate::oauth::DEFAULT_LIFETIME),
        "renewable without a lifetime: the default"
    );
    assert_eq!(kept.issued_for, Some(a.identity()));
    assert_eq!(kept.last_refresh, Some(at(100)));
    let rotated = renewed(&before, response(Some("rotated")), &a, at(100));
    assert_eq!(
        rotated.refresh_token.as_ref().map(RefreshToken::expose),
        Some("rotated")
    );
}

#[test]
fn an_expiring_token_is_due_a_margin_before_expiry() {
    let a = spec("a", None);
    // A two-hour token: ten minutes early, without jitter.
    assert_eq!(
        valid(at(0), 2 * HOUR).next_due(&a, None, at(1), mono(), 0.0, 0.0),
        Some(at(6600))
    );
    // The configured margin wins.
    assert_eq!(
        valid(at(0), 2 * HOUR).next_due(
            &a,
            Some(Duration::from_secs(300)),
            at(1),
            mono(),
            0.0,
            0.0
        ),
        Some(at(6900))
    );
    // Refreshing keeps the schedule of the token held.
    let mut refreshing = valid(at(0), 2 * HOUR);
    refreshing.begin_request();
    assert_eq!(
        refreshing.next_due(&a, None, at(1), mono(), 0.0, 0.0),
        Some(at(6600))
    );
    // A token that does not expire needs no refresh.
    let mut forever = valid(at(0), HOUR);
    forever.record.expires_at = None;
    assert_eq!(forever.next_due(&a, None, at(1), mono(), 0.0, 0.0), None);
}

#[test]
fn an_overdue_token_is_due_at_once_spread_over_a_few_seconds() {
    let a = spec("a", None);
    let overdue = valid(at(0), HOUR);
    assert_eq!(
        overdue.next_due(&a, None, at(7200), mono(), 0.0, 0.0),
        Some(at(7200))
    );
    assert_eq!(
        overdue.next_due(&a, None, at(7200), mono(), 0.0, 0.5),
        Some(at(7200) + Duration::from_millis(2500))
    );
}

#[test]
fn a_failing_installation_is_due_at_its_retry_time_and_a_lost_one_never() {
    let a = spec("a", Some("0 0 * * * *"));
    let mut installation = valid(at(0), HOUR);
    installation.failed(
        &a,
        &failure(ErrorKind::Transient, "503", Some(Duration::from_secs(30))),
        at(100),
        0.0,
    );
    assert_eq!(
        installation.next_due(&a, None, at(100), mono(), 0.0, 0.0),
        Some(at(130))
    );
    installation.failed(
        &a,
        &failure(ErrorKind::NeedsLogin, "gone", None),
        at(200),
        0.0,
    );
    assert_eq!(
        installation.next_due(&a, None, at(200), mono(), 0.0, 0.0),
        None,
        "not even the cron schedule: a human must log in first"
    );
    installation.failed(
        &a,
        &failure(ErrorKind::Misconfigured, "bad", None),
        at(200),
        0.0,
    );
    assert_eq!(
        installation.next_due(&a, None, at(200), mono(), 0.0, 0.0),
        None
    );
}

#[test]
fn cron_times_share_the_queue_with_expiry() {
    // 1_700_000_000 is 22:13:20 UTC; the next full hour is 1_700_002_800.
    let next_hour = at(2800);
    let a = spec("a", Some("0 0 * * * *"));
    // A day-long token is due long after the next full hour.
    assert_eq!(
        valid(at(0), 24 * HOUR).next_due(&a, None, at(0), mono(), 0.0, 0.0),
        Some(next_hour)
    );
    // A ten-minute token is due before it.
    let short = valid(at(0), Duration::from_secs(600));
    assert_eq!(
        short.next_due(&a, None, at(0), mono(), 0.0, 0.0),
        Some(at(540))
    );
    // A client-credentials installation with no token yet is due at its
    // cron time; an authorization-code one cannot ask without a login.
    let bot = spec("bot", Some("0 0 * * * *"));
    let empty = |spec: &Spec| Installation::loaded(spec, Ok(Loaded::Missing));
    assert_eq!(
        empty(&bot).next_due(&bot, None, at(0), mono(), 0.0, 0.0),
        Some(next_hour)
    );
    assert_eq!(empty(&a).next_due(&a, None, at(0), mono(), 0.0, 0.0), None);
    // Without a schedule nothing is due for an empty installation.
    let plain = spec("bot", None);
    assert_eq!(
        empty(&plain).next_due(&plain, None, at(0), mono(), 0.0, 0.0),
        None
    );
}

#[test]
fn a_refresh_whose_outcome_is_unknown_says_the_grant_may_be_lost() {
    let a = spec("a", None);
    let mut installation = valid(at(0), HOUR);
    let mut error = failure(ErrorKind::Transient, "timed out", None);
    error.grant_at_risk = true;
    let said = installation.failed(&a, &error, at(0), 0.0).to_string();
    assert!(
        said.starts_with(
            "the provider is failing (timed out); the provider may have used up the refresh token"
        ),
        "{said}"
    );
    assert!(said.contains("the authorization may be lost"), "{said}");
    assert!(said.ends_with("tokd tries again in 5s"), "{said}");
}

#[test]
fn the_monotonic_deadline_wins_when_the_wall_clock_is_set_back() {
    let a = spec("a", None);
    let mut installation = valid(at(0), HOUR);
    installation.succeeded(holding(at(0), HOUR), None, at(0), mono());
    assert_eq!(installation.deadline, Some(mono() + HOUR));
    // An hour and a minute later the clock reads an hour earlier than it
    // should: by the wall the token has an hour left, in truth it is gone.
    let later = mono() + HOUR + Duration::from_secs(60);
    let wall = at(60);
    assert!(
        installation
            .token_valid_for(wall, mono() + Duration::from_secs(60), Duration::ZERO)
            .is_some()
    );
    assert!(
        installation
            .token_valid_for(wall, later, Duration::ZERO)
            .is_none()
    );
    // The due time follows the deadline, not the wall.
    let set_back = UNIX_EPOCH + Duration::from_secs(1_700_000_000 - 3600);
    let due = installation
        .next_due(&a, None, set_back, mono(), 0.0, 0.0)
        .expect("due");
    // Ten percent of the lifetime (six minutes) before the real expiry,
    // which is an hour from now by either reckoning of elapsed time.
    assert_eq!(due, set_back + HOUR - Duration::from_secs(360));
}

#[test]
fn a_caller_that_got_less_than_it_asked_pauses_further_refreshes() {
    let mut installation = valid(at(0), HOUR);
    assert!(!installation.fell_short_recently(mono()));
    installation.fell_short(mono());
    assert!(installation.fell_short_recently(mono() + Duration::from_secs(29)));
    assert!(!installation.fell_short_recently(mono() + FELL_SHORT_PAUSE));
}

#[test]
fn a_down_keyring_shows_as_locked_refuses_requests_and_is_checked_again() {
    let a = spec("a", None);
    let mut installation = valid(at(0), HOUR);
    installation.keyring_down = Some(Box::new(KeyringDown::Locked));
    assert_eq!(installation.kind(), InstallationState::Locked);
    assert!(
        matches!(installation.refusal(&a, at(10)), Err(Error::Locked(m)) if m.contains("is locked; unlock it")),
        "no request whose answer could not be kept"
    );
    assert_eq!(
        installation.next_due(&a, None, at(10), mono(), 0.0, 0.0),
        Some(at(10) + KEYRING_RECHECK)
    );
    // The held token is still served.
    assert!(
        installation
            .token_valid_for(at(10), mono(), Duration::from_secs(60))
            .is_some()
    );
    installation.keyring_down = Some(Box::new(KeyringDown::Gone));
    assert!(
        installation
            .message(&a, at(10))
            .contains("no keyring (Secret Service) answers")
    );

    // Tokens kept in the keyring and not read yet: read, then valid.
    let mut unread = Installation::loaded(
        &a,
        Ok(Loaded::Found(Record {
            store: Store::Keyring,
            ..holding(at(0), HOUR).without_tokens()
        })),
    );
    assert!(unread.tokens_unread);
    assert_eq!(unread.record.access_token, None);
    unread.tokens_read(
        Some(AccessToken::new("access".to_owned())),
        Some(RefreshToken::new("refresh".to_owned())),
    );
    assert_eq!(unread.state, State::Valid);
    assert!(!unread.tokens_unread);
}

/// `now` for `spec`, with the one monotonic moment.
fn moment(spec: &Spec, now: SystemTime) -> At<'_> {
    At {
        spec,
        now,
        monotonic: mono(),
    }
}

#[test]
fn a_get_decides_under_one_lock_what_it_gets() {
    let a = spec("a", None);
    let (now, min) = (at(0), Duration::from_secs(60));
    let served = |decision: Decision| match decision {
        Decision::Serve(token) => token,
        other => panic!("served nothing: {other:?}"),
    };
    // A token that lasts is served; one that does not is asked for.
    let installation = valid(now, HOUR);
    assert!(
        served(moment(&a, now).decide(&installation, min))
            .warning
            .is_none()
    );
    assert!(matches!(
        moment(&a, now).decide(&installation, 2 * HOUR),
        Decision::Request {
            keyring_first: false
        }
    ));
    // A refresh in flight may kill the held token: wait for it.
    let mut refreshing = installation.clone();
    refreshing.begin_request();
    assert!(matches!(
        moment(&a, now).decide(&refreshing, min),
        Decision::AwaitRotation(_)
    ));
    // A lost grant takes its access token with it.
    let mut lost = installation.clone();
    lost.state = State::NeedsLogin(LoginNeeded::Lost {
        detail: "invalid_grant".into(),
    });
    assert!(matches!(
        moment(&a, now).decide(&lost, min),
        Decision::Refuse(Error::NeedsLogin(_))
    ));
    // Tokens kept in a keyring not read yet: read them first.
    let mut unread = installation.clone();
    unread.tokens_unread = true;
    assert!(matches!(
        moment(&a, now).decide(&unread, 2 * HOUR),
        Decision::Request {
            keyring_first: true
        }
    ));
    // Backing off: the held token, with the reason it is short.
    let mut failing = installation.clone();
    failing.failed(
        &a,
        &failure(ErrorKind::Transient, "HTTP 503", None),
        now,
        0.5,
    );
    let token = served(moment(&a, now).decide(&failing, 2 * HOUR));
    assert!(
        token
            .warning
            .is_some_and(|w| w.contains("less than the 2h"))
    );
}

#[test]
fn a_finished_request_gives_each_caller_what_it_wanted() {
    let a = spec("a", None);
    let now = at(0);
    let down = || Err(Error::ProviderUnavailable("the provider is down".into()));
    // A get is given the held token, with the reason, when the request
    // failed transiently; `tokctl refresh` is given the failure.
    let mut held = valid(now, HOUR);
    match moment(&a, now).settle(&mut held, down(), Want::Token(2 * HOUR)) {
        Ok(Got::Token(token)) => {
            assert!(
                token
                    .warning
                    .is_some_and(|w| w.contains("the provider is down"))
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        moment(&a, now).settle(&mut held, down(), Want::Refresh),
        Err(Error::ProviderUnavailable(_))
    ));
    // A fresh token shorter than asked: served with a warning, and
    // further gets asking as much pause instead of refreshing each.
    let mut short = valid(now, HOUR);
    assert!(!short.fell_short_recently(mono()));
    match moment(&a, now).settle(&mut short, Ok(()), Want::Token(2 * HOUR)) {
        Ok(Got::Token(token)) => assert!(token.warning.is_some()),
        other => panic!("{other:?}"),
    }
    assert!(short.fell_short_recently(mono()));
    // The schedule never asks the desktop to unlock a keyring; callers do.
    assert!(!Want::Scheduled.asked());
    assert!(Want::Refresh.asked() && Want::Token(HOUR).asked());
    assert!(matches!(
        moment(&a, now).settle(&mut valid(now, HOUR), Ok(()), Want::Scheduled),
        Ok(Got::Expiry(Some(_)))
    ));
}

#[test]
fn a_caller_that_fell_short_waits_for_a_refresh_in_flight_like_the_others() {
    // Asked for more than the provider's tokens live, a get takes the held
    // token rather than refresh again; while a refresh is in flight that
    // token may be the one a rotating provider is killing, so it waits
    // for the refresh as a caller whose token lasts does.
    let a = spec("a", None);
    let now = at(0);
    let mut installation = valid(now, HOUR);
    installation.fell_short(mono());
    assert!(matches!(
        moment(&a, now).decide(&installation, 2 * HOUR),
        Decision::Serve(_)
    ));
    installation.begin_request();
    match moment(&a, now).decide(&installation, 2 * HOUR) {
        Decision::AwaitRotation(held) => assert!(held.warning.is_some()),
        other => panic!("did not wait for the refresh in flight: {other:?}"),
    }
}
