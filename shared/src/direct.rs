//! `GetToken` over tokd's private socket in one round trip, with blocking
//! I/O and no async runtime: what `tokctl get` does first.
//!
//! A zbus client waits for the server's `OK` before it sends a call, so a
//! call on a new connection costs two round trips, each a wakeup of tokd
//! and of the client. Nothing the client says depends on the answer to
//! `AUTH`, so here the whole conversation goes in one write: `AUTH
//! EXTERNAL` with this user's uid, `BEGIN`, then the call, as sd-bus
//! clients send it too. tokd's zbus server reads the handshake line by
//! line and keeps the bytes after `BEGIN` as the start of the message
//! stream. The answer is `OK GUID` followed by the reply.
//!
//! The messages are zbus's own: the call is built by [`Message`] and the
//! reply's header and body are decoded by zbus's wire decoder; a named
//! error arrives as its [`crate::Error`] variant, as through the proxy.

use crate::{BUS_NAME, Error, INTERFACE, OBJECT_PATH};
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use zbus::message::{Header, Message, Type};
use zbus::wire::Endian;
use zbus::wire::serialized::{Context, Data};

/// What `GetToken` answers: (token, expiry or 0, token type, warning).
pub type Token = (String, i64, String, String);

/// Why no answer came from tokd.
#[derive(Debug)]
pub enum Unanswered {
    /// The handshake did not complete within its time (or the socket
    /// broke, or tokd refused it): nothing was answered, and the session
    /// bus may be tried instead.
    Handshake(std::io::Error),
    /// tokd took the call but did not answer before the deadline.
    Deadline,
}

/// The longest message read: the D-Bus specification's limit.
const MAX_MESSAGE: usize = 128 << 20;

/// Asks tokd for `name`'s token on `stream`, a connected private socket
/// already checked to be served by this user (`uid`). The handshake must
/// complete by `handshake_by`, the answer arrive by `deadline`.
pub fn get_token(
    stream: &mut UnixStream,
    uid: u32,
    name: &str,
    min_valid_secs: u32,
    handshake_by: Instant,
    deadline: Instant,
) -> Result<crate::Result<Token>, Unanswered> {
    let call = Message::method_call(OBJECT_PATH, "GetToken")
        .interface(INTERFACE)
        .destination(BUS_NAME)
        .build(&(name, min_valid_secs))
        .map_err(|error| Unanswered::Handshake(std::io::Error::other(error)))?;
    let mut request = Vec::with_capacity(64 + call.data().len());
    request.extend_from_slice(b"\0AUTH EXTERNAL ");
    for byte in uid.to_string().bytes() {
        request.extend_from_slice(format!("{byte:02x}").as_bytes());
    }
    request.extend_from_slice(b"\r\nBEGIN\r\n");
    request.extend_from_slice(call.data());
    let handshake = Unanswered::Handshake;
    stream
        .set_write_timeout(Some(remaining(handshake_by).map_err(handshake)?))
        .map_err(handshake)?;
    stream.write_all(&request).map_err(handshake)?;

    // The server's answer to AUTH: one line.
    let mut received = Vec::with_capacity(4096);
    let line_end = loop {
        if let Some(at) = received.windows(2).position(|pair| pair == b"\r\n") {
            break at;
        }
        if received.len() > 4096 {
            return Err(handshake(refused("an endless handshake line")));
        }
        read_more(stream, &mut received, handshake_by).map_err(handshake)?;
    };
    if !received.starts_with(b"OK ") {
        return Err(handshake(refused("tokd refused the handshake")));
    }
    received.drain(..line_end + 2);

    // Then messages, until the reply to the call.
    let serial = call.primary_header().serial_num();
    loop {
        let frame = loop {
            match frame_of(&received) {
                Some(Ok(frame)) if received.len() >= frame.length => break frame,
                Some(Err(error)) => return Ok(Err(transport(error))),
                _ => {
                    if let Err(error) = read_more(stream, &mut received, deadline) {
                        return answer_lost(error);
                    }
                }
            }
        };
        let message: Vec<u8> = received.drain(..frame.length).collect();
        if let Some(answer) = decode_reply(&message, frame, &call, serial) {
            return Ok(answer);
        }
    }
}

/// The time left until `by`, or a timeout error when there is none.
fn remaining(by: Instant) -> std::io::Result<Duration> {
    let left = by.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(std::io::ErrorKind::TimedOut.into())
    } else {
        Ok(left)
    }
}

/// Reads what has arrived (at least one byte) into `received`.
fn read_more(stream: &mut UnixStream, received: &mut Vec<u8>, by: Instant) -> std::io::Result<()> {
    stream.set_read_timeout(Some(remaining(by)?))?;
    let mut chunk = [0; 4096];
    let read = loop {
        match stream.read(&mut chunk) {
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    if read == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    received.extend_from_slice(&chunk[..read]);
    Ok(())
}

fn refused(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionRefused, why.to_owned())
}

/// After the handshake: a timeout is the deadline, anything else a
/// transport failure (tokd went away mid-call).
fn answer_lost(error: std::io::Error) -> Result<crate::Result<Token>, Unanswered> {
    if matches!(
        error.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    ) {
        Err(Unanswered::Deadline)
    } else {
        Ok(Err(transport(zbus::Error::InputOutput(error.into()))))
    }
}

fn transport(error: zbus::Error) -> Error {
    Error::ZBus(error)
}

/// Where a message's parts lie.
#[derive(Debug, Clone, Copy)]
struct Frame {
    endian: Endian,
    /// Where the body starts (the header padded to 8 bytes).
    body: usize,
    /// The whole message.
    length: usize,
}

/// The frame of the message at the start of `bytes`, once its fixed
/// header has arrived; an error for an unknown byte order or a length
/// past the limit.
fn frame_of(bytes: &[u8]) -> Option<zbus::Result<Frame>> {
    let fixed = bytes.get(..16)?;
    let endian = match fixed[0] {
        b'l' => Endian::Little,
        b'B' => Endian::Big,
        _ => return Some(Err(zbus::Error::IncorrectEndian)),
    };
    let number = |at: usize| {
        let four = [fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]];
        let number = match endian {
            Endian::Little => u32::from_le_bytes(four),
            Endian::Big => u32::from_be_bytes(four),
        };
        number as usize
    };
    let body = (16 + number(12)).next_multiple_of(8);
    let length = body + number(4);
    Some(if length > MAX_MESSAGE {
        Err(zbus::Error::ExcessData)
    } else {
        Ok(Frame {
            endian,
            body,
            length,
        })
    })
}

/// The answer `message` carries if it is the reply to `call` (serial
/// `serial`); `None` for any other message.
fn decode_reply(
    message: &[u8],
    frame: Frame,
    call: &Message,
    serial: std::num::NonZeroU32,
) -> Option<crate::Result<Token>> {
    let data = Data::new(message, Context::new(frame.endian, 0));
    let header = match data.deserialize::<Header<'_>>() {
        Ok((header, _)) => header,
        Err(error) => return Some(Err(transport(error))),
    };
    if header.reply_serial() != Some(serial) {
        return None;
    }
    let body = data.slice(frame.body..);
    let signature = header.signature();
    Some(match header.message_type() {
        Type::MethodReturn if signature == <Token as zbus::wire::Type>::SIGNATURE => body
            .deserialize::<Token>()
            .map(|(token, _)| token)
            .map_err(transport),
        Type::Error => {
            let description = if signature == <String as zbus::wire::Type>::SIGNATURE {
                body.deserialize::<String>().ok().map(|(text, _)| text)
            } else {
                None
            };
            let name = header.error_name().map(|name| name.to_owned().into());
            match name {
                Some(name) => Err(Error::from(zbus::Error::MethodError(
                    name,
                    description,
                    call.clone(),
                ))),
                None => Err(transport(zbus::Error::InvalidField)),
            }
        }
        _ => Err(transport(zbus::Error::InvalidReply)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::DBusError as _;

    /// The other end of the socket, scripted: what it read before it
    /// answered, and the call in it.
    struct Peer {
        stream: UnixStream,
        before_answering: Vec<u8>,
    }

    impl Peer {
        /// Reads until the handshake lines and one whole message have
        /// arrived, answering nothing; then `with` the call's header.
        fn read_call<T>(&mut self, with: impl FnOnce(&Header<'_>) -> T) -> T {
            loop {
                if let Some(begin) = find(&self.before_answering, b"BEGIN\r\n") {
                    let message = &self.before_answering[begin + 7..];
                    if let Some(Ok(frame)) = frame_of(message)
                        && message.len() >= frame.length
                    {
                        let data = Data::new(message.to_vec(), Context::new(frame.endian, 0));
                        let (header, _) = data.deserialize::<Header<'_>>().expect("a header");
                        let (name, secs) = data
                            .slice(frame.body..)
                            .deserialize::<(String, u32)>()
                            .expect("GetToken's arguments")
                            .0;
                        assert_eq!((name.as_str(), secs), ("bench", 60));
                        return with(&header);
                    }
                }
                let mut chunk = [0; 1024];
                let read = self.stream.read(&mut chunk).expect("read");
                assert!(read > 0, "the client hung up before its call");
                self.before_answering.extend_from_slice(&chunk[..read]);
            }
        }

        fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).expect("write");
        }
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    const OK: &[u8] = b"OK 0123456789abcdef0123456789abcdef\r\n";

    /// Runs `get_token` against a peer that `script` plays.
    fn against(
        handshake_within: Duration,
        deadline_within: Duration,
        script: impl FnOnce(&mut Peer) + Send + 'static,
    ) -> Result<crate::Result<Token>, Unanswered> {
        let (mut client, server) = UnixStream::pair().expect("a socket pair");
        let peer = std::thread::spawn(move || {
            let mut peer = Peer {
                stream: server,
                before_answering: Vec::new(),
            };
            script(&mut peer);
        });
        let now = Instant::now();
        let answer = get_token(
            &mut client,
            1000,
            "bench",
            60,
            now + handshake_within,
            now + deadline_within,
        );
        drop(client);
        peer.join().expect("the peer's script");
        answer
    }

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn the_call_goes_with_the_handshake_and_the_reply_is_its_answer() {
        let answer = against(LONG, LONG, |peer| {
            let (member, interface, reply) = peer.read_call(|call| {
                let reply = Message::method_return(call)
                    .build(&("the-token", 5_i64, "bearer", ""))
                    .expect("a reply");
                (
                    call.member().map(|m| m.to_string()),
                    call.interface().map(|i| i.to_string()),
                    reply,
                )
            });
            assert!(
                peer.before_answering
                    .starts_with(b"\0AUTH EXTERNAL 31303030\r\nBEGIN\r\n"),
                "{:?}",
                String::from_utf8_lossy(&peer.before_answering)
            );
            assert_eq!(member.as_deref(), Some("GetToken"));
            assert_eq!(interface.as_deref(), Some(INTERFACE));
            // A message that is not the reply comes first; it is skipped.
            let other = Message::signal(OBJECT_PATH, INTERFACE, "StateChanged")
                .build(&("bench", "valid", ""))
                .expect("a signal");
            let mut answer = OK.to_vec();
            answer.extend_from_slice(other.data());
            answer.extend_from_slice(reply.data());
            // In two writes, the second in the middle of the reply.
            let (first, second) = answer.split_at(OK.len() + other.data().len() + 10);
            peer.send(first);
            peer.send(second);
        });
        let (token, expires_at, token_type, warning) = answer.expect("an answer").expect("a token");
        assert_eq!(
            (
                token.as_str(),
                expires_at,
                token_type.as_str(),
                warning.as_str()
            ),
            ("the-token", 5, "bearer", "")
        );
    }

    #[test]
    fn a_named_error_arrives_as_its_variant() {
        let answer = against(LONG, LONG, |peer| {
            let error = peer.read_call(|call| {
                Message::error(call, "org.tokd.tokd1.Error.NeedsLogin")
                    .build(&("run `tokctl login bench`",))
                    .expect("an error")
            });
            let mut answer = OK.to_vec();
            answer.extend_from_slice(error.data());
            peer.send(&answer);
        });
        match answer.expect("an answer") {
            Err(error @ Error::NeedsLogin(_)) => {
                assert_eq!(error.description(), Some("run `tokctl login bench`"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refused_or_silent_handshake_is_unanswered() {
        let refused = against(LONG, LONG, |peer| {
            peer.read_call(|_| ());
            peer.send(b"REJECTED EXTERNAL\r\n");
        });
        assert!(
            matches!(refused, Err(Unanswered::Handshake(_))),
            "{refused:?}"
        );
        // Silence until the handshake's time is up (the peer waits for
        // the client to hang up).
        let silent = against(Duration::from_millis(1), LONG, |peer| {
            peer.read_call(|_| ());
            let mut rest = Vec::new();
            let _ = peer.stream.read_to_end(&mut rest);
        });
        assert!(
            matches!(silent, Err(Unanswered::Handshake(_))),
            "{silent:?}"
        );
    }

    #[test]
    fn no_reply_by_the_deadline_is_the_deadline() {
        let answer = against(LONG, Duration::from_millis(1), |peer| {
            peer.read_call(|_| ());
            peer.send(OK);
            let mut rest = Vec::new();
            let _ = peer.stream.read_to_end(&mut rest);
        });
        assert!(matches!(answer, Err(Unanswered::Deadline)), "{answer:?}");
    }

    #[test]
    fn a_hang_up_garbage_or_an_absurd_length_is_a_transport_failure() {
        let hostile: [&[u8]; 4] = [
            // Gone after OK.
            b"",
            // Not a byte order.
            b"x\x02\x00\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00",
            // A body of 4 GiB: refused before anything is read or kept.
            b"l\x02\x00\x01\xff\xff\xff\xff\x01\x00\x00\x00\x00\x00\x00\x00",
            // A header that does not decode.
            b"l\x02\x00\x01\x00\x00\x00\x00\x01\x00\x00\x00\x08\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff",
        ];
        for bytes in hostile {
            let answer = against(LONG, LONG, move |peer| {
                peer.read_call(|_| ());
                let mut answer = OK.to_vec();
                answer.extend_from_slice(bytes);
                peer.send(&answer);
            });
            assert!(
                matches!(answer, Ok(Err(Error::ZBus(_)))),
                "{bytes:?}: {answer:?}"
            );
        }
    }
}
