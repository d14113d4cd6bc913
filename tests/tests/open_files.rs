//! A gateway out of file descriptors refuses new connections cleanly: it closes them at once
//! (rather than leaving them in the accept queue until the client gives up), says so in its
//! log, keeps running, and serves again once connections end. The gateway runs under
//! `prlimit --nofile=64:64` so a few dozen loopback connections exhaust it.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use outpost_proto::paths;
use outpost_tests::{ApplianceClient, Gateway, Workdir};

const LIMIT: u64 = 64;
const CONNECTIONS: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_files_closes_new_connections_at_once_and_recovers() -> anyhow::Result<()> {
    if prlimit_on_path().is_none() {
        eprintln!("SKIP: prlimit (util-linux) is not installed");
        return Ok(());
    }
    let wd = Workdir::new("open-files")?;
    let mut gw = Gateway::init_loopback(&wd.subdir("gw")?)?;
    gw.set_open_files_limit(LIMIT);
    let addr = gw.start()?;
    let app = ApplianceClient::new(addr, &gw.ca_pem()?)?;
    let r = app.get_without_cert(paths::HEALTH).await?;
    assert_eq!(r.status, 200, "{}", r.describe());

    // More idle TCP connections than the gateway has descriptors. The ones it accepted wait in
    // the TLS handshake (closed after its 10 s handshake timeout); the rest must be closed at
    // once by the shedding path.
    let held: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect(addr))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    let mut closed_early = 0;
    for mut s in held.iter() {
        let left = Duration::from_secs(4).saturating_sub(start.elapsed());
        s.set_read_timeout(Some(left.max(Duration::from_millis(10))))?;
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => closed_early += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed_early += 1,
            _ => {}
        }
    }
    assert!(
        closed_early > 0,
        "no connection was closed within 4 s although {CONNECTIONS} exceed the gateway's {LIMIT} descriptors; log:\n{}",
        gw.log_tail(20)
    );
    assert!(
        closed_early < CONNECTIONS,
        "every connection was closed at once: the gateway accepted none; log:\n{}",
        gw.log_tail(20)
    );
    assert!(
        gw.is_running()?,
        "the gateway exited; log:\n{}",
        gw.log_tail(40)
    );
    let log = std::fs::read_to_string(gw.log_path())?;
    assert!(
        log.contains("out of open files"),
        "the gateway did not log that it is out of files; log:\n{}",
        gw.log_tail(20)
    );

    // The connections end; the gateway serves again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match app.get_without_cert(paths::HEALTH).await {
            Ok(r) if r.status == 200 => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the gateway does not answer after the connections ended: {other:?}; log:\n{}",
                    gw.log_tail(20)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    gw.stop()?;
    Ok(())
}

/// `prlimit` on PATH.
fn prlimit_on_path() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("prlimit"))
            .find(|p| p.is_file())
    })
}
