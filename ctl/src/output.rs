//! What tokctl prints: a token in each format, the `--json` forms, the
//! table of `list` and the details of `status`.

use crate::Format;
use serde::Serialize;
use tokd_shared::InstallationInfo;

use crate::say::one_line;
pub use tokd_shared::text::span;

/// What `tokctl get` prints for GetToken's answer (its warning, if any,
/// said on stderr first).
pub fn token(
    token: &str,
    expires_at: i64,
    token_type: &str,
    warning: &str,
    format: Format,
    sasl_user: Option<&str>,
) -> String {
    if !warning.is_empty() {
        crate::say::warning(warning);
    }
    match sasl_user {
        Some(user) => sasl_response(format, user, token),
        None => format_token(token, expires_at, token_type, format, crate::now()),
    }
}

pub fn format_token(
    token: &str,
    expires_at: i64,
    token_type: &str,
    format: Format,
    now: i64,
) -> String {
    match format {
        Format::Raw => format!("{token}\n"),
        Format::Header => format!("Authorization: {} {token}\n", header_scheme(token_type)),
        // `sasl_response`'s: these need the user, which `run` checks first.
        Format::Xoauth2 | Format::Oauthbearer => format!("{token}\n"),
        Format::Json => {
            #[derive(Serialize)]
            struct JsonToken<'a> {
                access_token: &'a str,
                token_type: String,
                expires_at: Option<i64>,
                expires_in: Option<i64>,
            }
            to_json(&JsonToken {
                access_token: token,
                token_type: header_scheme(token_type),
                expires_at: (expires_at != 0).then_some(expires_at),
                expires_in: (expires_at != 0).then(|| (expires_at - now).max(0)),
            })
        }
    }
}

/// For `--format xoauth2` and `oauthbearer`, the user they log in as
/// (`Some`); `None` for the other formats. A usage error when --user is
/// missing or out of place, or could break the SASL string apart.
pub fn sasl_user(format: Format, user: Option<&str>) -> Result<Option<&str>, String> {
    match (format, user) {
        (Format::Xoauth2 | Format::Oauthbearer, Some(user)) => {
            if user.is_empty() || user.chars().any(char::is_control) {
                Err("--user must be a mail address or account name, without control characters".to_owned())
            } else {
                Ok(Some(user))
            }
        }
        (Format::Xoauth2 | Format::Oauthbearer, None) => Err(
            "--format xoauth2 and oauthbearer log in as a user: add --user ADDRESS (your mail address)"
                .to_owned(),
        ),
        (_, Some(_)) => Err(
            "--user goes with --format xoauth2 or oauthbearer only".to_owned(),
        ),
        (_, None) => Ok(None),
    }
}

/// The base64 SASL initial response for `format` (XOAUTH2, or OAUTHBEARER
/// as RFC 7628 §3.1 writes it: the GS2 header with the user's name, its
/// `,` and `=` escaped, then `auth`), on one line.
pub fn sasl_response(format: Format, user: &str, token: &str) -> String {
    use base64::Engine as _;
    let plain = match format {
        Format::Oauthbearer => {
            let name = user.replace('=', "=3D").replace(',', "=2C");
            format!("n,a={name},\x01auth=Bearer {token}\x01\x01")
        }
        _ => format!("user={user}\x01auth=Bearer {token}\x01\x01"),
    };
    let mut line = base64::engine::general_purpose::STANDARD.encode(plain);
    line.push('\n');
    line
}

/// `bearer` → `Bearer` (RFC 6750 spelling); other types capitalized.
pub fn header_scheme(token_type: &str) -> String {
    let lower = token_type.to_ascii_lowercase();
    let mut chars = lower.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => "Bearer".to_owned(),
    }
}

pub fn to_json<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// The stable `--json` form of one installation (documented in the README).
#[derive(Debug, Serialize)]
pub struct JsonInstallation<'a> {
    name: &'a str,
    consumer: &'a str,
    grant: &'a str,
    state: &'a str,
    message: Option<&'a str>,
    scopes: Vec<&'a str>,
    expires_at: Option<i64>,
    last_refresh: Option<i64>,
    next_refresh: Option<i64>,
    last_error: Option<&'a str>,
}

impl<'a> From<&'a InstallationInfo> for JsonInstallation<'a> {
    fn from(info: &'a InstallationInfo) -> Self {
        let time = |t: i64| (t != 0).then_some(t);
        let text = |s: &'a str| (!s.is_empty()).then_some(s);
        Self {
            name: &info.name,
            consumer: &info.consumer,
            grant: &info.grant,
            state: &info.state,
            message: text(&info.message),
            scopes: info.scopes.split_whitespace().collect(),
            expires_at: time(info.expires_at),
            last_refresh: time(info.last_refresh),
            next_refresh: time(info.next_refresh),
            last_error: text(&info.last_error),
        }
    }
}

/// The `status --json` form: an installation and where its tokens are.
#[derive(Debug, Serialize)]
pub struct JsonStatus<'a> {
    #[serde(flatten)]
    installation: JsonInstallation<'a>,
    tokens_in: Option<&'a str>,
}

impl<'a> JsonStatus<'a> {
    pub fn new(info: &'a InstallationInfo, tokens_in: Option<&'a str>) -> Self {
        Self {
            installation: JsonInstallation::from(info),
            tokens_in,
        }
    }
}

/// `in 1h 59m`, `3m ago`, `-`.
pub fn relative(time: i64, now: i64) -> String {
    if time == 0 {
        return "-".to_owned();
    }
    let delta = time - now;
    if delta == 0 {
        return "now".to_owned();
    }
    let span = span(delta.unsigned_abs());
    if delta > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// [`relative`] for something that has happened: a time tokd stamped a
/// moment after tokctl's clock read is `now`, never `in 1s`.
pub fn relative_past(time: i64, now: i64) -> String {
    if time == 0 {
        "-".to_owned()
    } else {
        relative(time.min(now), now)
    }
}

pub fn expiry_phrase(expires_at: i64, now: i64) -> String {
    if expires_at == 0 {
        "the token does not expire".to_owned()
    } else {
        format!("the token expires {}", relative(expires_at, now))
    }
}

pub fn table(list: &[InstallationInfo], now: i64) -> String {
    if list.is_empty() {
        return String::new();
    }
    let rows: Vec<[String; 5]> = list
        .iter()
        .map(|info| {
            let note = if info.message.is_empty() {
                shorten(&one_line(&info.last_error), NOTE_WIDTH)
            } else {
                info.message.clone()
            };
            [
                info.name.clone(),
                info.state.clone(),
                relative(info.expires_at, now),
                relative(info.next_refresh, now),
                one_line(&note),
            ]
        })
        .collect();
    let header = ["NAME", "STATE", "EXPIRES", "NEXT REFRESH", "NOTE"].map(str::to_owned);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The longest detail `list` shows in its NOTE column (`status` has all).
const NOTE_WIDTH: usize = 100;

/// `text`, cut at a word boundary to at most `width` characters with `…`.
fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let cut: String = text.chars().take(width - 1).collect();
    let cut = match cut.rfind(' ') {
        Some(space) if space > width / 2 => &cut[..space],
        _ => &cut,
    };
    format!("{}…", cut.trim_end_matches([' ', ',', ';', ':', '(']))
}

pub fn details(info: &InstallationInfo, tokens_in: Option<&str>, now: i64) -> String {
    let mut out = format!("{}\n", info.name);
    let mut field = |key: &str, value: String| {
        if !value.is_empty() {
            out.push_str(&format!("  {key:<13} {value}\n"));
        }
    };
    field("state", info.state.clone());
    field("message", one_line(&info.message));
    field("consumer", info.consumer.clone());
    field("grant", info.grant.clone());
    field("scopes", info.scopes.clone());
    field(
        "tokens in",
        match tokens_in {
            Some("keyring") => "the keyring (Secret Service)".to_owned(),
            Some("file") => "the state file".to_owned(),
            Some(other) => other.to_owned(),
            None => String::new(),
        },
    );
    field("expires", relative(info.expires_at, now));
    field("last refresh", relative_past(info.last_refresh, now));
    field("next refresh", relative(info.next_refresh, now));
    if info.last_error != info.message {
        field("last error", one_line(&info.last_error));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_formats() {
        assert_eq!(format_token("t", 0, "bearer", Format::Raw, 0), "t\n");
        assert_eq!(
            format_token("t", 0, "bearer", Format::Header, 0),
            "Authorization: Bearer t\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&format_token("t", 1100, "bearer", Format::Json, 1000))
                .expect("json");
        assert_eq!(
            json,
            serde_json::json!({"access_token": "t", "token_type": "Bearer", "expires_at": 1100, "expires_in": 100})
        );
        let json: serde_json::Value =
            serde_json::from_str(&format_token("t", 0, "mac", Format::Json, 1000)).expect("json");
        assert_eq!(json["expires_at"], serde_json::Value::Null);
        assert_eq!(json["token_type"], "Mac");
    }

    #[test]
    fn long_notes_are_cut_at_a_word() {
        assert_eq!(shorten("short", 10), "short");
        let long = "cannot reach the token endpoint: error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)";
        let cut = shorten(long, 60);
        assert!(cut.chars().count() <= 60, "{cut}");
        assert!(
            cut.ends_with('…') && long.starts_with(cut.trim_end_matches('…')),
            "{cut}"
        );
    }

    #[test]
    fn relative_times_keep_two_units() {
        assert_eq!(relative(0, 100), "-");
        assert_eq!(relative(100 + 7170, 100), "in 1h 59m");
        assert_eq!(relative(100 - 125, 100), "2m 5s ago");
        assert_eq!(relative(100, 100), "now", "not \"in 0s\"");
        assert_eq!(relative_past(101, 100), "now", "not \"in 1s\"");
        assert_eq!(relative_past(40, 100), "1m ago");
        assert_eq!(span(48 * 3600), "2d", "not \"2days\"");
        assert_eq!(span(3 * 86_400 + 4 * 3600 + 59), "3d 4h");
        assert_eq!(span(0), "0s");
        assert_eq!(span(45), "45s");
        assert_eq!(span(3600 + 30), "1h");
    }

    #[test]
    fn the_table_lines_up_and_shows_the_note() {
        let info = InstallationInfo {
            name: "bitbucket".into(),
            consumer: "bb".into(),
            grant: "authorization_code".into(),
            state: "needs-login".into(),
            message: "run `tokctl login bitbucket`".into(),
            scopes: String::new(),
            expires_at: 0,
            last_refresh: 0,
            next_refresh: 0,
            last_error: String::new(),
        };
        let text = table(&[info], 0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].starts_with("bitbucket  needs-login"), "{text}");
        assert!(lines[1].ends_with("run `tokctl login bitbucket`"), "{text}");
    }

    #[test]
    fn sasl_responses_are_what_the_mechanisms_define() {
        use base64::Engine as _;
        let decode = |line: String| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(line.trim_end())
                    .expect("base64"),
            )
            .expect("utf-8")
        };
        assert_eq!(
            decode(sasl_response(Format::Xoauth2, "me@example.com", "T")),
            "user=me@example.com\x01auth=Bearer T\x01\x01"
        );
        assert_eq!(
            decode(sasl_response(Format::Oauthbearer, "a=b,c@example.com", "T")),
            "n,a=a=3Db=2Cc@example.com,\x01auth=Bearer T\x01\x01"
        );
        assert!(sasl_response(Format::Xoauth2, "u", "T").ends_with('\n'));
    }

    #[test]
    fn the_sasl_formats_need_a_user_and_only_they_take_one() {
        assert_eq!(sasl_user(Format::Xoauth2, Some("me")), Ok(Some("me")));
        assert_eq!(sasl_user(Format::Raw, None), Ok(None));
        assert!(sasl_user(Format::Oauthbearer, None).is_err_and(|e| e.contains("--user ADDRESS")));
        assert!(sasl_user(Format::Raw, Some("me")).is_err());
        assert!(sasl_user(Format::Xoauth2, Some("me\x01auth=Bearer x")).is_err());
    }
}
