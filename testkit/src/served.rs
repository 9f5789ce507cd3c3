//! What the test kit's small resource servers (`kube.rs`, `oci.rs`,
//! `registry.rs`) share: a listener on 127.0.0.1 with a free port, HTTP/1.1
//! (over TLS when given an acceptor) answered by a plain function of the
//! request, and a task that stops when the server is dropped.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use std::net::SocketAddr;

/// A running server: its address, and its accept loop, stopped on drop.
#[derive(Debug)]
pub(crate) struct Served {
    pub address: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Serves `answer` on 127.0.0.1 at a free port, over TLS with `tls`.
/// `what` names the server in the message should the bind fail.
pub(crate) async fn serve<F>(
    what: &str,
    tls: Option<tokio_rustls::TlsAcceptor>,
    answer: F,
) -> Served
where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|error| panic!("bind the {what} on 127.0.0.1: {error}"));
    let address = listener.local_addr().expect("local address");
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (tls, answer) = (tls.clone(), answer.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = answer(&request);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    Some(tls) => {
                        let Ok(stream) = tls.accept(stream).await else {
                            return;
                        };
                        http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await
                    }
                    None => {
                        http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await
                    }
                };
            });
        }
    });
    Served { address, accept }
}
