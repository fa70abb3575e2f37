//! What a client can make one connection cost berth-control: idle and slow
//! connections are closed, and running out of file descriptors neither
//! stops the server nor keeps it from answering once they are gone.
//! Everything stays on loopback, with bounded loops.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Server;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Short timeouts so the tests see them act.
const FLAGS: &[&str] = &[
    "--tls-handshake-timeout",
    "2s",
    "--request-header-timeout",
    "2s",
    "--idle-connection-timeout",
    "3s",
];

/// Reads from `conn` until the server closes it; how long that took, or
/// `None` if it was still open after `limit`.
fn closed_within(conn: &mut impl Read, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match conn.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// A TLS connection to the server (trusting its CA) offering `alpn`.
fn tls_connect(
    server: &Server,
    alpn: &[u8],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let ca = CertificateDer::from_pem_file(server.data_dir().join("pki/ca.crt")).expect("CA");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("add CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("127.0.0.1").expect("name"),
    )
    .expect("TLS client");
    let tcp = TcpStream::connect(server.addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Complete the handshake.
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
    }
    tls
}

#[test]
fn more_idle_connections_than_open_files_neither_stop_nor_block_the_server() {
    // 256 files: the server keeps 128 for itself and serves 128
    // connections at once; 400 idle ones overrun that (before the fix, the
    // failed accept ended the process).
    let mut server = Server::start_with_open_files(256, FLAGS);
    let idle: Vec<TcpStream> = (0..400)
        .map(|_| TcpStream::connect(server.addr()).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        server.is_running(),
        "berth-control exited:\n{}",
        server.log()
    );
    // Idle connections are closed after the handshake timeout, in turn, so
    // a real request gets through.
    let deadline = Instant::now() + Duration::from_secs(40);
    let answered = loop {
        let out = server.kubectl(&["get", "--raw", "/healthz", "--request-timeout=10s"]);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no answer within 40 s: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
    };
    assert_eq!(answered.trim(), "ok");
    // Every idle connection was accepted and closed by the server.
    for mut conn in idle {
        conn.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        assert!(
            closed_within(&mut conn, Duration::from_secs(30)).is_some(),
            "an idle connection is still open"
        );
    }
    assert!(server.is_running());
}

#[test]
fn a_client_that_never_finishes_its_request_headers_is_disconnected() {
    let server = Server::start(FLAGS);
    let mut tls = tls_connect(&server, b"http/1.1");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .expect("write");
    let took = closed_within(&mut tls, Duration::from_secs(15))
        .expect("a connection with unfinished headers was still open after 15 s");
    assert!(took >= Duration::from_secs(1), "closed too early: {took:?}");
}

#[test]
fn an_http2_connection_without_requests_is_closed_when_idle() {
    let server = Server::start(FLAGS);
    let mut tls = tls_connect(&server, b"h2");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
    // Not even the connection preface: the idle timeout (3 s) asks it to
    // go, and it is dropped after as long again.
    let took = closed_within(&mut tls, Duration::from_secs(20))
        .expect("an idle HTTP/2 connection was still open after 20 s");
    assert!(took >= Duration::from_secs(2), "closed too early: {took:?}");
}

#[test]
fn a_tcp_connection_that_never_starts_tls_is_closed() {
    let server = Server::start(FLAGS);
    let mut tcp = TcpStream::connect(server.addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let took = closed_within(&mut tcp, Duration::from_secs(15))
        .expect("a connection without a TLS handshake was still open after 15 s");
    assert!(took >= Duration::from_secs(1), "closed too early: {took:?}");
}
