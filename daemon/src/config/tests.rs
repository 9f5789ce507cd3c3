use super::*;
use url::Url;

const FULL_EXAMPLE: &str = r#"
[daemon]
refresh_margin = "5m"

[consumers.bitbucket]
provider = "bitbucket"
client_id = "KEY"
client_secret_command = ["pass", "show", "bitbucket/oauth"]
redirect_uri = "http://127.0.0.1:8765/callback"

[consumers.acme]
token_url = "https://apim.example.com/oauth2/token"
auth_url = "https://apim.example.com/oauth2/authorize"
revoke_url = "https://apim.example.com/oauth2/revoke"
client_id = "..."
client_secret_file = "~/.config/tokd/acme.secret"
client_auth = "basic"

[installations.bitbucket]
consumer = "bitbucket"
scopes = ["repository", "pullrequest"]

[installations.bitbucket-bot]
consumer = "bitbucket"
grant = "client_credentials"
schedule = "0 0 */6 * * *"
"#;

fn parse(text: &str) -> Config {
    match Config::from_str(text) {
        Ok(config) => config,
        Err(error) => panic!("config should parse: {error}"),
    }
}

/// Asserts the text is refused on `line` with a message containing `needle`.
fn refused(text: &str, line: usize, needle: &str) -> ConfigError {
    let error = match Config::from_str(text) {
        Ok(config) => panic!("config should be refused ({needle}), got {config:?}"),
        Err(error) => error,
    };
    let shown = error.to_string();
    assert!(shown.contains(needle), "expected {needle:?} in: {shown}");
    assert_eq!(error.line(), line, "wrong line in: {shown}");
    assert!(shown.starts_with(&format!("config:{line}:")), "{shown}");
    error
}

#[test]
fn the_spec_example_parses() {
    let config = parse(FULL_EXAMPLE);
    assert_eq!(config.daemon.refresh_margin, Some(Duration::from_secs(300)));

    let bitbucket = &config.consumers["bitbucket"];
    assert_eq!(bitbucket.provider, Some(Preset::Bitbucket));
    assert_eq!(
        bitbucket.token_url.as_ref().map(Url::as_str),
        Some("https://bitbucket.org/site/oauth2/access_token")
    );
    assert_eq!(
        bitbucket.auth_url.as_ref().map(Url::as_str),
        Some("https://bitbucket.org/site/oauth2/authorize")
    );
    assert_eq!(bitbucket.client_auth, Some(ClientAuth::Basic));
    assert_eq!(bitbucket.git_username.as_deref(), Some("x-token-auth"));
    assert_eq!(
        bitbucket.secret,
        ClientSecretSource::Command(vec!["pass".into(), "show".into(), "bitbucket/oauth".into()])
    );
    assert_eq!(
        bitbucket.redirect_uri.as_ref().map(Url::as_str),
        Some("http://127.0.0.1:8765/callback")
    );

    let acme = &config.consumers["acme"];
    assert_eq!(acme.provider, None);
    assert_eq!(
        acme.token_url.as_ref().map(Url::as_str),
        Some("https://apim.example.com/oauth2/token")
    );
    assert_eq!(
        acme.revoke_url.as_ref().map(Url::as_str),
        Some("https://apim.example.com/oauth2/revoke")
    );
    match &acme.secret {
        ClientSecretSource::File(path) => {
            assert!(path.is_absolute(), "~ expanded: {}", path.display());
            assert!(path.ends_with(".config/tokd/acme.secret"));
        }
        other => panic!("expected a file source, got {other:?}"),
    }

    let interactive = &config.installations["bitbucket"];
    assert_eq!(&*interactive.consumer, "bitbucket");
    assert_eq!(interactive.grant, Grant::AuthorizationCode);
    assert_eq!(interactive.scopes, ["repository", "pullrequest"]);
    assert_eq!(interactive.schedule, None);

    let bot = &config.installations["bitbucket-bot"];
    assert_eq!(bot.grant, Grant::ClientCredentials);
    assert_eq!(
        bot.schedule.as_ref().map(CronSchedule::as_str),
        Some("0 0 */6 * * *")
    );
    assert!(bot.scopes.is_empty());

    assert_eq!(
        config.summary(),
        "2 consumers (acme, bitbucket), 2 installations (bitbucket, bitbucket-bot)"
    );
}

#[test]
fn an_empty_file_is_a_valid_empty_config() {
    let config = parse("");
    assert!(config.consumers.is_empty() && config.installations.is_empty());
    assert_eq!(config.daemon, DaemonConfig::default());
    assert_eq!(config.summary(), "0 consumers, 0 installations");
}

#[test]
fn every_preset_supplies_endpoints() {
    for preset in Preset::ALL {
        let name = preset.as_str();
        let config = parse(&format!(
            "[consumers.c]\nprovider = \"{name}\"\nclient_id = \"id\"\nclient_secret = \"s\"\n"
        ));
        let consumer = &config.consumers["c"];
        let endpoints = preset.endpoints();
        let with_tenant = |url: &str| url.replace("{tenant}", "common");
        assert_eq!(consumer.provider, Some(preset));
        assert_eq!(
            consumer.token_url.as_ref().map(Url::as_str),
            Some(with_tenant(endpoints.token_url).as_str()),
            "{name}"
        );
        assert_eq!(
            consumer.auth_url.as_ref().map(Url::as_str),
            Some(with_tenant(endpoints.auth_url).as_str()),
            "{name}"
        );
        assert_eq!(
            consumer.device_url.as_ref().map(Url::to_string),
            endpoints.device_url.map(with_tenant),
            "{name}"
        );
        assert!(
            consumer
                .token_url
                .as_ref()
                .is_some_and(|u| u.scheme() == "https")
        );
        assert_eq!(consumer.client_auth, Some(endpoints.client_auth), "{name}");
    }
}

#[test]
fn presets_add_what_their_providers_need_for_a_refresh_token() {
    let consumer = |preset: &str, extra: &str| {
        parse(&format!(
            "[consumers.c]\nprovider = \"{preset}\"\nclient_id = \"id\"\n{extra}\n"
        ))
        .consumers["c"]
            .clone()
    };
    let google = consumer("google", "");
    assert_eq!(
        google.auth_params,
        [
            ("access_type".to_owned(), "offline".to_owned()),
            ("prompt".to_owned(), "consent".to_owned())
        ]
    );
    assert!(google.keep_alive.is_some());
    let atlassian = consumer("atlassian", "auth_params = { prompt = \"login\" }");
    assert_eq!(
        atlassian.auth_params,
        [
            ("audience".to_owned(), "api.atlassian.com".to_owned()),
            ("prompt".to_owned(), "login".to_owned())
        ],
        "the config's own value wins"
    );
    assert_eq!(
        atlassian.scopes_for(&["read:jira-work".to_owned()]),
        ["read:jira-work", "offline_access"]
    );
    let microsoft = consumer("microsoft", "tenant = \"contoso.onmicrosoft.com\"");
    assert_eq!(
        microsoft.token_url.as_ref().map(Url::as_str),
        Some("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token")
    );
    assert_eq!(
        microsoft.scopes_for(&["offline_access".to_owned()]),
        ["offline_access"],
        "not twice"
    );
    assert_eq!(
        consumer("github", "").git_username.as_deref(),
        Some("x-access-token")
    );
    assert_eq!(
        consumer("gitlab", "").git_username.as_deref(),
        Some("oauth2")
    );
}

#[test]
fn an_issuer_replaces_the_presets_endpoints_and_token_url() {
    let config = parse(
        r#"[consumers.work]
provider = "gitlab"
issuer = "https://gitlab.example.com"
client_id = "id"

[installations.w]
consumer = "work"
scopes = ["read_api"]
"#,
    );
    let work = &config.consumers["work"];
    assert_eq!(work.token_url, None, "discovered, not gitlab.com's");
    assert_eq!(work.auth_url, None);
    assert_eq!(
        work.git_username.as_deref(),
        Some("oauth2"),
        "the preset's quirks stay"
    );
    assert_eq!(work.token_identity(), "issuer:https://gitlab.example.com/");
    assert_eq!(
        work.git_hosts,
        ["gitlab.example.com"],
        "a self-hosted GitLab serves git where it serves OAuth"
    );
}

#[test]
fn git_hosts_come_from_the_preset_the_endpoints_or_the_config() {
    let config = parse(
        r#"[consumers.bb]
provider = "bitbucket"
client_id = "id"

[consumers.own]
token_url = "https://sso.example.com/token"
auth_url = "https://login.example.com/authorize"
client_id = "id"

[consumers.listed]
token_url = "https://sso.example.com/token"
client_id = "id"
git_hosts = ["Git.Example.com", "mirror.example.com"]
"#,
    );
    let bb = &config.consumers["bb"];
    assert_eq!(bb.git_hosts, ["bitbucket.org"]);
    assert!(bb.serves_git_host("bitbucket.org"));
    assert!(
        bb.serves_git_host("BitBucket.org:443"),
        "case and port do not matter"
    );
    assert!(!bb.serves_git_host("bitbucket.org.evil.example"));
    assert!(!bb.serves_git_host("github.com"));
    let own = &config.consumers["own"];
    assert_eq!(own.git_hosts, ["sso.example.com", "login.example.com"]);
    let listed = &config.consumers["listed"];
    assert_eq!(listed.git_hosts, ["git.example.com", "mirror.example.com"]);
    assert!(
        !listed.serves_git_host("sso.example.com"),
        "the list replaces the default"
    );
    for bad in [
        "https://github.com",
        "github.com/team",
        "github.com:0",
        "github.com:99999",
        "github.com:",
        "[::1",
        "[::1]x",
        "[::g]:80",
        "",
    ] {
        refused(
            &format!(
                "[consumers.c]\nprovider = \"github\"\nclient_id = \"id\"\ngit_hosts = [\"{bad}\"]\n"
            ),
            4,
            "host names without scheme or path, each with a port if it needs one",
        );
    }
    // Loopback endpoints never become git hosts: any local user can
    // listen on a loopback port. A port named in `git_hosts` is needed
    // for plain HTTP, and matches that port only.
    let config = parse(
        r#"[consumers.local]
token_url = "http://127.0.0.1:18080/token"
auth_url = "http://localhost:18080/authorize"
client_id = "id"

[consumers.dev]
token_url = "http://127.0.0.1:18080/token"
client_id = "id"
git_hosts = ["127.0.0.1:8080", "[::1]:8080", "localhost", "git.example.com:8443"]
"#,
    );
    let local = &config.consumers["local"];
    assert!(local.git_hosts.is_empty(), "{:?}", local.git_hosts);
    assert!(!local.serves_git_host("127.0.0.1:31337"));
    let dev = &config.consumers["dev"];
    assert!(dev.serves_git_host("127.0.0.1:8080") && dev.names_git_port("127.0.0.1:8080"));
    assert!(!dev.serves_git_host("127.0.0.1:31337") && !dev.names_git_port("127.0.0.1:31337"));
    assert!(!dev.names_git_port("127.0.0.1"));
    assert!(dev.names_git_port("[::1]:8080") && !dev.names_git_port("[::1]:8081"));
    assert!(dev.serves_git_host("localhost:31337"), "https to any port");
    assert!(!dev.names_git_port("localhost:31337"), "but not plain HTTP");
    // `localhost` is two addresses: a server on 127.0.0.1 leaves the port
    // on ::1 to anyone, so plain HTTP goes to IP addresses only.
    let named = parse(
        r#"[consumers.n]
token_url = "https://sso.example.com/token"
client_id = "id"
git_hosts = ["localhost:8080"]
"#,
    );
    assert!(!named.consumers["n"].names_git_port("localhost:8080"));
    assert!(dev.serves_git_host("git.example.com:8443"));
    assert!(!dev.serves_git_host("git.example.com"));
    refused(
        "[consumers.c]\nprovider = \"github\"\nclient_id = \"id\"\ngit_hosts = \"github.com\"\n",
        4,
        "e.g. [\"github.com\"]",
    );
}

#[test]
fn extra_parameters_may_not_be_tokds_own() {
    let base = "[consumers.c]\ntoken_url = \"https://a.example/t\"\nclient_id = \"id\"\n";
    refused(
        &format!("{base}auth_params = {{ state = \"x\" }}\n"),
        4,
        "`auth_params` may not set `state`, which tokd sets itself",
    );
    refused(
        &format!("{base}token_params = {{ grant_type = \"x\" }}\n"),
        4,
        "`token_params` may not set `grant_type`",
    );
    let fine = parse(&format!(
        "{base}token_params = {{ resource = \"https://api.example\" }}\n"
    ));
    assert_eq!(
        fine.consumers["c"].token_params,
        [("resource".to_owned(), "https://api.example".to_owned())]
    );
}

#[test]
fn a_tenant_belongs_to_microsoft_and_an_issuer_is_checked() {
    refused(
        "[consumers.c]\nprovider = \"github\"\ntenant = \"x\"\nclient_id = \"id\"\n",
        3,
        "`tenant` belongs to `provider = \"microsoft\"`",
    );
    refused(
        "[consumers.c]\nissuer = \"http://id.example.com\"\nclient_id = \"id\"\n",
        2,
        "`issuer` must use https",
    );
    refused(
        "[consumers.c]\nissuer = \"https://id.example.com/?x=1\"\nclient_id = \"id\"\n",
        2,
        "may not have a query",
    );
}

#[test]
fn explicit_keys_override_a_preset() {
    let config = parse(
        r#"
[consumers.bb]
provider = "bitbucket"
token_url = "http://127.0.0.1:9000/token"
auth_url = "http://localhost:9000/authorize"
revoke_url = "http://[::1]:9000/revoke"
client_auth = "post"
client_id = "id"
"#,
    );
    let consumer = &config.consumers["bb"];
    assert_eq!(
        consumer.token_url.as_ref().map(Url::as_str),
        Some("http://127.0.0.1:9000/token")
    );
    assert_eq!(
        consumer.auth_url.as_ref().map(Url::as_str),
        Some("http://localhost:9000/authorize")
    );
    assert_eq!(
        consumer.revoke_url.as_ref().map(Url::as_str),
        Some("http://[::1]:9000/revoke")
    );
    assert_eq!(consumer.client_auth, Some(ClientAuth::Post));
    assert_eq!(consumer.secret, ClientSecretSource::None);
}

#[test]
fn inline_secret_and_client_auth_default() {
    let config = parse(
        "[consumers.x]\ntoken_url = \"https://a.example/t\"\nclient_id = \"id\"\nclient_secret = \"shh\"\n",
    );
    let consumer = &config.consumers["x"];
    assert_eq!(consumer.client_auth, None);
    let endpoints = crate::oauth::Endpoints::of(consumer, None).expect("endpoints");
    assert_eq!(endpoints.client_auth, ClientAuth::Basic, "the default");
    assert_eq!(consumer.auth_url, None);
    match &consumer.secret {
        ClientSecretSource::Inline(secret) => assert_eq!(secret.expose(), "shh"),
        other => panic!("{other:?}"),
    }
    // The parsed config's Debug never shows the inline secret.
    assert!(!format!("{config:?}").contains("shh"));
}

#[test]
fn durations_in_every_documented_form() {
    for (text, expected) in [
        ("90s", Duration::from_secs(90)),
        ("5m", Duration::from_secs(300)),
        ("1h", Duration::from_secs(3600)),
        ("1500ms", Duration::from_millis(1500)),
        ("1h 30m", Duration::from_secs(5400)),
        (" 2m ", Duration::from_secs(120)),
        ("90", Duration::from_secs(90)),
    ] {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
        let config = parse(&format!("[daemon]\nrefresh_margin = \"{text}\"\n"));
        assert_eq!(config.daemon.refresh_margin, Some(expected));
    }
    for bad in [
        "",
        "five minutes",
        "-5m",
        "5 parsecs",
        "5M",
        "2d",
        "1w",
        "1y",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
    }
    let config = parse("[daemon]\nrefresh_margin = 90\n");
    assert_eq!(
        config.daemon.refresh_margin,
        Some(Duration::from_secs(90)),
        "whole seconds as a number"
    );
    refused(
        "[daemon]\nrefresh_margin = \"5M\"\n",
        2,
        "the unit \"M\" is longer than tokd takes (\"M\" is months; minutes are \"m\")",
    );
    refused("[daemon]\nrefresh_margin = -5\n", 2, "may not be negative");
}

#[test]
fn a_table_or_key_written_twice_is_named() {
    let installation = "[installations.i]\nconsumer = \"c\"\n";
    refused(
        &format!(
            "[consumers.c]\nprovider = \"github\"\nclient_id = \"x\"\n{installation}{installation}"
        ),
        6,
        "[installations.i] appears twice; each name is one table, so merge the two",
    );
    refused(
        "[consumers.c]\nprovider = \"github\"\nclient_id = \"x\"\nclient_id = \"y\"\n",
        4,
        "`client_id` is set twice in the same table; keep one",
    );
}

#[test]
fn a_list_written_as_a_string_gets_the_list_form_as_an_example() {
    refused(
        "[consumers.c]\nprovider = \"github\"\nclient_id = \"x\"\n\n[installations.i]\nconsumer = \"c\"\nscopes = \"repository pullrequest\"\n",
        7,
        "expected a list of strings, one per item, e.g. [\"repository\", \"pullrequest\"]",
    );
    refused(
        "[consumers.c]\nprovider = \"github\"\nclient_id = \"x\"\nclient_secret_command = \"pass show x\"\n",
        4,
        "e.g. [\"pass\", \"show\", \"x\"]",
    );
}

#[test]
fn bad_duration_names_the_line() {
    refused(
        "[daemon]\n\nrefresh_margin = \"5 minutez\"\n",
        3,
        "invalid duration \"5 minutez\"",
    );
    refused(
        "[daemon]\nrefresh_margin = true\n",
        2,
        "a duration such as \"90s\", \"5m\" or \"1h\", or whole seconds",
    );
}

#[test]
fn bad_cron_names_the_line() {
    let text = r#"[consumers.c]
token_url = "https://a.example/t"
client_id = "id"
client_secret = "s"

[installations.i]
consumer = "c"
grant = "client_credentials"
schedule = "every tuesday"
"#;
    refused(text, 9, "invalid cron schedule \"every tuesday\"");
    // Five fields (no seconds) is the classic mistake: the message says so.
    let five = text.replace("every tuesday", "0 */6 * * *");
    refused(&five, 9, "six fields with seconds first");
}

#[test]
fn a_cron_schedule_names_its_next_time_in_utc() {
    use std::time::{SystemTime, UNIX_EPOCH};
    let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
    let every_six_hours = CronSchedule::parse(" 0 0 */6 * * * ").expect("valid");
    assert_eq!(every_six_hours.as_str(), "0 0 */6 * * *");
    // 1_700_000_000 is 2023-11-14 22:13:20 UTC; the next hour divisible
    // by six is midnight, 1_700_006_400.
    assert_eq!(
        every_six_hours.next_after(at(1_700_000_000)),
        Some(at(1_700_006_400))
    );
    // Strictly after: at midnight itself the next is six hours on.
    assert_eq!(
        every_six_hours.next_after(at(1_700_006_400)),
        Some(at(1_700_006_400 + 6 * 3600))
    );
    let every_second = CronSchedule::parse("* * * * * *").expect("valid");
    assert_eq!(
        every_second.next_after(at(10) + Duration::from_millis(500)),
        Some(at(11))
    );
    assert_eq!(
        every_second.next_after(SystemTime::UNIX_EPOCH - Duration::from_secs(1)),
        None
    );
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    refused(
        "[daemon]\nrefresh_margn = \"5m\"\n",
        2,
        "unknown field `refresh_margn`",
    );
    refused("[demon]\n", 1, "unknown field `demon`");
    let consumer = "[consumers.c]\ntoken_url = \"https://a.example/t\"\nclient_id = \"id\"\nclient_secrett = \"s\"\n";
    refused(consumer, 4, "unknown field `client_secrett`");
    let installation = consumer.replace("client_secrett", "client_secret")
        + "[installations.i]\nconsumer = \"c\"\nscope = [\"a\"]\n";
    refused(&installation, 7, "unknown field `scope`");
}

#[test]
fn missing_consumer_is_named() {
    let text = r#"[consumers.bitbucket]
provider = "bitbucket"
client_id = "id"

[installations.work]
consumer = "bitbuckett"
"#;
    let error = refused(
        text,
        6,
        "installation `work` names consumer `bitbuckett`, which is not defined",
    );
    assert!(error.to_string().contains("defined: bitbucket"), "{error}");
    refused(
        "[installations.work]\nconsumer = \"nobody\"\n",
        2,
        "no consumers are defined",
    );
}

#[test]
fn two_secret_sources_are_refused() {
    let text = r#"[consumers.c]
provider = "bitbucket"
client_id = "id"
client_secret = "inline"
client_secret_file = "/etc/secret"
"#;
    refused(text, 5, "has both `client_secret` and `client_secret_file`");
    let three = text.to_owned() + "client_secret_command = [\"pass\"]\n";
    refused(&three, 5, "keep exactly one secret source");
}

#[test]
fn empty_secret_command_is_refused() {
    refused(
        "[consumers.c]\nprovider = \"github\"\nclient_id = \"id\"\nclient_secret_command = []\n",
        4,
        "`client_secret_command` needs a program",
    );
}

#[test]
fn authorization_code_needs_an_auth_url() {
    let text = r#"[consumers.m2m]
token_url = "https://a.example/token"
client_id = "id"
client_secret = "s"

[installations.i]
consumer = "m2m"
"#;
    refused(
        text,
        7,
        "uses the authorization_code grant, but consumer `m2m` has no `auth_url`",
    );
    // The same consumer can do client credentials.
    let config = parse(&(text.to_owned() + "grant = \"client_credentials\"\n"));
    assert_eq!(config.installations["i"].grant, Grant::ClientCredentials);
}

#[test]
fn client_credentials_needs_a_secret() {
    let text = "[consumers.c]\nprovider = \"bitbucket\"\nclient_id = \"id\"\n\n[installations.i]\nconsumer = \"c\"\ngrant = \"client_credentials\"\n";
    refused(text, 6, "has no client secret");
}

#[test]
fn consumer_without_preset_needs_a_token_url() {
    refused(
        "\n[consumers.acme]\nclient_id = \"id\"\n",
        2,
        "consumer `acme` needs `token_url`, or an `issuer` to discover it from, or a `provider` preset (atlassian, bitbucket, github, gitlab, google, microsoft, smartthings)",
    );
}

#[test]
fn names_outside_the_allowed_set_are_refused() {
    refused(
        "[consumers.\"my consumer\"]\nprovider = \"github\"\nclient_id = \"id\"\n",
        1,
        "consumer name \"my consumer\" may use only letters, digits",
    );
    let text = "[consumers.c]\nprovider = \"github\"\nclient_id = \"id\"\n[installations.\"../evil\"]\nconsumer = \"c\"\n";
    refused(text, 4, "installation name \"../evil\" may use only");
    // Every allowed character is accepted.
    let ok = "[consumers.\"A-z_0.9\"]\nprovider = \"github\"\nclient_id = \"id\"\n";
    assert!(parse(ok).consumers.contains_key("A-z_0.9"));
}

#[test]
fn unknown_preset_grant_and_client_auth_are_refused() {
    refused(
        "[consumers.c]\nprovider = \"gitea\"\nclient_id = \"id\"\n",
        2,
        "unknown variant `gitea`",
    );
    refused(
        "[consumers.c]\nprovider = \"github\"\nclient_id = \"id\"\nclient_auth = \"jwt\"\n",
        4,
        "unknown variant `jwt`",
    );
    refused(
        "[consumers.c]\nprovider = \"github\"\nclient_id = \"id\"\n[installations.i]\nconsumer = \"c\"\ngrant = \"password\"\n",
        6,
        "unknown variant `password`",
    );
}

#[test]
fn bad_urls_are_refused() {
    refused(
        "[consumers.c]\ntoken_url = \"not a url\"\nclient_id = \"id\"\n",
        2,
        "invalid URL \"not a url\"",
    );
    refused(
        "[consumers.c]\ntoken_url = \"ftp://a.example/t\"\nclient_id = \"id\"\n",
        2,
        "expected an http:// or https:// URL",
    );
    refused(
        "[consumers.c]\ntoken_url = \"http://apim.example.com/token\"\nclient_id = \"id\"\n",
        2,
        "`token_url` must use https",
    );
}

#[test]
fn missing_client_id_and_empty_client_id() {
    refused(
        "[consumers.c]\nprovider = \"github\"\n",
        1,
        "consumer `c` has no `client_id`",
    );
    refused(
        "[consumers.c]\nprovider = \"github\"\nclient_id = \" \"\n",
        3,
        "empty `client_id`",
    );
}

#[test]
fn scopes_with_spaces_are_refused() {
    refused(
        "[consumers.c]\nprovider = \"github\"\nclient_id = \"id\"\n[installations.i]\nconsumer = \"c\"\nscopes = [\"repo user\"]\n",
        6,
        "scope \"repo user\" may not be empty or contain spaces",
    );
}

#[test]
fn toml_syntax_errors_have_a_line() {
    refused("[daemon\n", 1, "");
    refused("[consumers.c]\nclient_id = \"unterminated\n", 2, "");
}

#[test]
fn from_path_names_the_file_and_resolves_relative_secret_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[daemon]\nbogus = 1\n").expect("write");
    let error = Config::from_path(&path).expect_err("refused");
    let shown = error.to_string();
    assert!(
        shown.starts_with(&format!("{}:2:1: ", path.display())),
        "{shown}"
    );

    std::fs::write(
        &path,
        "[consumers.c]\nprovider = \"github\"\nclient_id = \"id\"\nclient_secret_file = \"c.secret\"\n",
    )
    .expect("write");
    let config = Config::from_path(&path).expect("valid");
    assert_eq!(
        config.consumers["c"].secret,
        ClientSecretSource::File(dir.path().join("c.secret"))
    );

    let missing = Config::from_path(&dir.path().join("absent.toml")).expect_err("missing");
    assert!(matches!(missing, ConfigError::Read { .. }));
    assert!(missing.to_string().contains("absent.toml"), "{missing}");
}

#[test]
fn line_column_counts_characters() {
    let text = "ab\nçd=1\n";
    assert_eq!(line_column(text, 0), (1, 1));
    assert_eq!(line_column(text, 3), (2, 1));
    assert_eq!(line_column(text, 5), (2, 2)); // after the two-byte 'ç'
    assert_eq!(line_column(text, 999), (3, 1));
}

/// Each error that names a fix, and the text with exactly that fix made:
/// the fixed text parses.
#[test]
fn errors_that_name_a_fix_go_once_it_is_made() {
    let consumer = "[consumers.c]\nprovider = \"github\"\nclient_id = \"x\"\n";
    let installation = "[installations.i]\nconsumer = \"c\"\n";
    let cases: [(String, &str, String); 5] = [
        (
            format!("{consumer}\n[installations.i]\nconsumer = \"cc\"\n"),
            "add a [consumers.cc] table",
            format!(
                "{consumer}\n[consumers.cc]\nprovider = \"github\"\nclient_id = \"y\"\n\n[installations.i]\nconsumer = \"cc\"\n"
            ),
        ),
        (
            "[consumers.c]\nprovider = \"github\"\nclient_id = \"x\"\nclient_id = \"y\"\n"
                .to_owned(),
            "keep one",
            "[consumers.c]\nprovider = \"github\"\nclient_id = \"x\"\n".to_owned(),
        ),
        (
            format!("{consumer}{installation}[installations.i]\nscopes = [\"read\"]\n"),
            "merge the two",
            format!("{consumer}{installation}scopes = [\"read\"]\n"),
        ),
        (
            "[consumers.c]\nprovider = \"github\"\n".to_owned(),
            "add the client id the provider gave you",
            "[consumers.c]\nprovider = \"github\"\nclient_id = \"Iv1.abc\"\n".to_owned(),
        ),
        (
            format!("{consumer}client_secret = \"s\"\nclient_secret_file = \"/s\"\n"),
            "keep exactly one secret source",
            format!("{consumer}client_secret_file = \"/s\"\n"),
        ),
    ];
    for (broken, fix, fixed) in cases {
        let error = Config::from_str(&broken).expect_err(fix).to_string();
        assert!(error.contains(fix), "{fix:?} in: {error}");
        parse(&fixed);
    }
}

#[test]
fn registries_go_to_one_installation_each_with_the_consumer_s_user_name() {
    let config = parse(
        r#"[consumers.google]
provider = "google"
client_id = "id"
client_secret = "s"

[consumers.own]
token_url = "https://sso.example.com/token"
client_id = "id"
client_secret = "s"
registry_username = "robot"

[consumers.plain]
token_url = "https://sso.example.com/token"
client_id = "id"
client_secret = "s"

[installations.gcr]
consumer = "google"
registries = ["europe-docker.pkg.dev", "GCR.io"]

[installations.ci]
consumer = "own"
grant = "client_credentials"
registries = ["registry.example.com:5000"]

[installations.other]
consumer = "plain"
grant = "client_credentials"
registries = ["[::1]:5000"]
"#,
    );
    let login = |registry: &str| {
        let login = &config.registries[registry];
        (login.installation.as_str(), login.username.as_str())
    };
    assert_eq!(login("gcr.io"), ("gcr", "oauth2accesstoken"));
    assert_eq!(login("europe-docker.pkg.dev"), ("gcr", "oauth2accesstoken"));
    assert_eq!(login("registry.example.com:5000"), ("ci", "robot"));
    assert_eq!(login("[::1]:5000"), ("other", "oauth2"));
    assert_eq!(config.registries.len(), 4);
    // On this machine: container tools use plain HTTP there.
    let warnings = config.warnings(std::path::Path::new("/nonexistent/config.toml"));
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("registry `[::1]:5000` is on this machine")),
        "{warnings:?}"
    );
    assert!(
        !warnings
            .iter()
            .any(|w| w.contains("`gcr.io` is on this machine"))
    );

    let twice = r#"[consumers.plain]
token_url = "https://sso.example.com/token"
client_id = "id"
client_secret = "s"

[installations.one]
consumer = "plain"
grant = "client_credentials"
registries = ["ghcr.io"]

[installations.two]
consumer = "plain"
grant = "client_credentials"
registries = ["GHCR.io"]
"#;
    refused(
        twice,
        14,
        "registry `ghcr.io` is in the `registries` of installations `one` and `two`",
    );
    // Docker Hub's names are one registry.
    let hub = twice
        .replace("[\"ghcr.io\"]", "[\"index.docker.io\"]")
        .replace("[\"GHCR.io\"]", "[\"docker.io\"]");
    refused(
        &hub,
        14,
        "registry `docker.io` is in the `registries` of installations `one` and `two`",
    );
    let with_scheme = twice.replace("[\"GHCR.io\"]", "[\"https://other.example/v2/\"]");
    refused(&with_scheme, 14, "without scheme or path");
    let empty_user = twice.replace(
        "client_id = \"id\"\n",
        "client_id = \"id\"\nregistry_username = \"a:b\"\n",
    );
    refused(
        &empty_user,
        4,
        "`registry_username` may not be empty or hold ':'",
    );
}

#[test]
fn the_parser_goes_on_past_a_table_it_stops_at() {
    let text = "[consumers.é]\ntoken_url = \"https://sso.example.com/token\nclient_id = \"x\"\n\n[consumers.two]\ntoken_url = \"https://sso.example.com/token\"\nclient_id = \"x\"\nshape = 1\n\n[daemon]\nrefresh_margin = \"5M\"\n";
    let error = Config::from_str(text).expect_err("three mistakes");
    let problems = error.problems();
    let lines: Vec<usize> = problems.iter().map(|p| p.line()).collect();
    // Line 1: `é` is not a bare key (the table's first mistake; its
    // unclosed string on line 2 is not reported beside it).
    assert_eq!(lines, [1, 8, 11], "{error}");
    assert!(
        problems[1].message().contains("unknown field `shape`"),
        "{error}"
    );
    // Positions are the file's own, whatever was blanked before them.
    assert_eq!(
        super::line_column(text, text.find("shape").expect("shape")),
        (8, 1)
    );
    assert_eq!(
        super::table_around(text, text.find("shape").expect("shape")).map(|(_, h)| h),
        Some("consumers.two".to_owned())
    );
    let blanked = super::blank("[a]\né=1\n[b]\n", 0..9);
    assert_eq!(blanked.len(), "[a]\né=1\n[b]\n".len());
    assert_eq!(blanked.lines().count(), 3);
}
