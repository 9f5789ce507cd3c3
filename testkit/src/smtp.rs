//! A mail server (SMTP, RFC 5321) that accepts only OAuth 2.0 bearer
//! tokens, as Gmail's and Outlook's do: `AUTH XOAUTH2` (Google's SASL
//! mechanism) and `AUTH OAUTHBEARER` (RFC 7628), each checked with the
//! emulator. Mail is accepted only once a live token was given; a refused
//! token gets the mechanism's JSON error challenge, then `535`.
//! Plain TCP on 127.0.0.1 (no STARTTLS): the clients are told `tls off`.

use crate::TokenChecker;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// What a client did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmtpEvent {
    /// `AUTH MECHANISM` with this user, and whether the token was live.
    Auth {
        mechanism: String,
        user: String,
        token: String,
        accepted: bool,
    },
    /// A message accepted after authentication.
    Message { from: String, data: String },
}

/// A running mail server. Dropping it stops it.
#[derive(Debug)]
pub struct SmtpServer {
    address: SocketAddr,
    events: Arc<Mutex<Vec<SmtpEvent>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl SmtpServer {
    /// Starts a server on 127.0.0.1 with a free port that takes the tokens
    /// `checker` says are live.
    pub async fn start(checker: TokenChecker) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the mail server on 127.0.0.1");
        let address = listener.local_addr().expect("local address");
        let events = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&events);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (checker, events) = (checker.clone(), Arc::clone(&shared));
                tokio::spawn(async move {
                    let _ = session(stream, &checker, &events).await;
                });
            }
        });
        Self {
            address,
            events,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Everything clients did so far.
    pub fn events(&self) -> Vec<SmtpEvent> {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The messages accepted so far.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.events()
            .into_iter()
            .filter_map(|event| match event {
                SmtpEvent::Message { from, data } => Some((from, data)),
                SmtpEvent::Auth { .. } => None,
            })
            .collect()
    }
}

/// The user and the bearer token in a SASL initial response:
/// XOAUTH2's `user=U^Aauth=Bearer T^A^A`, or OAUTHBEARER's GS2 header
/// `n,a=U,` followed by `^A`-separated `key=value` pairs with `auth`.
pub fn sasl_bearer(mechanism: &str, decoded: &str) -> Option<(String, String)> {
    let (user, pairs) = match mechanism {
        "XOAUTH2" => {
            let rest = decoded.strip_prefix("user=")?;
            let (user, pairs) = rest.split_once('\x01')?;
            (user.to_owned(), pairs)
        }
        "OAUTHBEARER" => {
            let (gs2, pairs) = decoded.split_once('\x01')?;
            let mut fields = gs2.split(',');
            if !matches!(fields.next(), Some("n" | "y")) {
                return None;
            }
            let user = fields
                .next()?
                .strip_prefix("a=")?
                .replace("=2C", ",")
                .replace("=3D", "=");
            (user, pairs)
        }
        _ => return None,
    };
    if !pairs.ends_with("\x01\x01") && !pairs.ends_with('\x01') {
        return None;
    }
    let token = pairs
        .split('\x01')
        .find_map(|pair| pair.strip_prefix("auth=Bearer "))?;
    Some((user, token.to_owned()))
}

async fn session(
    stream: tokio::net::TcpStream,
    checker: &TokenChecker,
    events: &Mutex<Vec<SmtpEvent>>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let record = |event| {
        events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(event);
    };
    write
        .write_all(b"220 127.0.0.1 ESMTP tokd-testkit\r\n")
        .await?;
    let mut authenticated = false;
    let mut from = None;
    while let Some(line) = lines.next_line().await? {
        let line = line.trim_end_matches('\r');
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-127.0.0.1\r\n250-AUTH XOAUTH2 OAUTHBEARER\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("HELO") {
            b"250 127.0.0.1\r\n"
        } else if let Some(rest) = upper.strip_prefix("AUTH ") {
            let mut words = line[5..].split_whitespace();
            let mechanism = rest.split_whitespace().next().unwrap_or("").to_owned();
            let _ = words.next();
            let initial = match words.next() {
                Some(initial) => initial.to_owned(),
                None => {
                    write.write_all(b"334 \r\n").await?;
                    lines.next_line().await?.unwrap_or_default()
                }
            };
            let decoded = STANDARD
                .decode(initial.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .unwrap_or_default();
            match sasl_bearer(&mechanism, &decoded) {
                Some((user, token)) => {
                    let accepted = checker.is_valid(&token);
                    record(SmtpEvent::Auth {
                        mechanism,
                        user,
                        token,
                        accepted,
                    });
                    if accepted {
                        authenticated = true;
                        b"235 2.7.0 Accepted\r\n"
                    } else {
                        // The mechanisms' error challenge; the client
                        // answers it (empty, or ^A) before the failure.
                        let challenge = STANDARD.encode(
                            r#"{"status":"invalid_token","schemes":"bearer","scope":"https://mail.example/"}"#,
                        );
                        write
                            .write_all(format!("334 {challenge}\r\n").as_bytes())
                            .await?;
                        let _ = lines.next_line().await?;
                        b"535 5.7.8 Username and Password not accepted\r\n"
                    }
                }
                None => b"501 5.5.2 Cannot decode the response\r\n",
            }
        } else if upper.starts_with("MAIL FROM:") {
            if authenticated {
                from = Some(line[10..].trim().to_owned());
                b"250 2.1.0 OK\r\n"
            } else {
                b"530 5.7.0 Authentication required\r\n"
            }
        } else if upper.starts_with("RCPT TO:") {
            if from.is_some() {
                b"250 2.1.5 OK\r\n"
            } else {
                b"503 5.5.1 MAIL first\r\n"
            }
        } else if upper == "DATA" {
            if from.is_none() {
                write.write_all(b"503 5.5.1 MAIL first\r\n").await?;
                continue;
            }
            write
                .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await?;
            let mut data = String::new();
            while let Some(line) = lines.next_line().await? {
                let line = line.trim_end_matches('\r');
                if line == "." {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(line));
                data.push('\n');
            }
            record(SmtpEvent::Message {
                from: from.take().unwrap_or_default(),
                data,
            });
            b"250 2.0.0 OK queued\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            from = None;
            b"250 2.0.0 OK\r\n"
        } else {
            b"502 5.5.2 Command not recognized\r\n"
        };
        write.write_all(reply).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::sasl_bearer;

    #[test]
    fn both_mechanisms_give_user_and_token() {
        assert_eq!(
            sasl_bearer("XOAUTH2", "user=me@example.com\x01auth=Bearer T1\x01\x01"),
            Some(("me@example.com".into(), "T1".into()))
        );
        assert_eq!(
            sasl_bearer(
                "OAUTHBEARER",
                "n,a=a=3Db=2Cc@example.com,\x01host=127.0.0.1\x01port=25\x01auth=Bearer T2\x01\x01"
            ),
            Some(("a=b,c@example.com".into(), "T2".into()))
        );
        assert_eq!(
            sasl_bearer("XOAUTH2", "user=me\x01auth=Basic x\x01\x01"),
            None
        );
    }
}
