//! A gateway pool on loopback: two `outpost-gateway serve` processes sharing one
//! PostgreSQL database ([`crate::pg::TestDatabase`]), one CA and one server certificate
//! whose SANs cover `127.0.0.1`–`127.0.0.3`.
//!
//! The first gateway directory is made by `init`; the second is a copy of its CA, server
//! certificate, keys and `gateway.toml` (paths in it are relative), so both serve the same
//! identity. The pool of the issue listens on `127.0.0.2:5723` and `127.0.0.3:5723`;
//! [`pool_port`] falls back to another fixed port, free on both addresses, when 5723 is
//! taken and says so.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;

use anyhow::{bail, Context};

use crate::gateway::Gateway;
use crate::pg::TestDatabase;

/// The one port.
pub const POOL_PORT: u16 = 5723;

/// Ports tried, in order, when [`POOL_PORT`] is taken on either address.
pub const FALLBACK_PORTS: [u16; 6] = [15723, 25723, 35723, 45723, 55723, 57230];

/// Addresses of the first and second gateway of a pool.
pub const POOL_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];

/// SANs of the pool's server certificate: both pool addresses, plus the usual loopback
/// names so one-off clients on `127.0.0.1` work too.
pub const POOL_SANS: [&str; 4] = ["127.0.0.2", "127.0.0.3", "127.0.0.1", "localhost"];

/// Files `init` writes that the second gateway copies.
pub const SHARED_FILES: [&str; 5] = [
    "gateway.toml",
    "ca.pem",
    "ca-key.pem",
    "server.pem",
    "server-key.pem",
];

fn free_on_both(port: u16) -> bool {
    POOL_IPS
        .iter()
        .all(|ip| TcpListener::bind(SocketAddr::new(IpAddr::V4(*ip), port)).is_ok())
}

/// The port both pool gateways listen on: 5723 when it is free on `127.0.0.2` and
/// `127.0.0.3`, else the first free [`FALLBACK_PORTS`] entry (printed to stderr).
///
/// # Errors
/// When none is free.
pub fn pool_port() -> anyhow::Result<u16> {
    if free_on_both(POOL_PORT) {
        return Ok(POOL_PORT);
    }
    for p in FALLBACK_PORTS {
        if free_on_both(p) {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(
                err,
                "note: port {POOL_PORT} is taken on 127.0.0.2 or 127.0.0.3; the pool uses port {p} instead"
            );
            return Ok(p);
        }
    }
    bail!("port {POOL_PORT} and every fallback port {FALLBACK_PORTS:?} are taken on 127.0.0.2/127.0.0.3")
}

/// `127.0.0.2:port` and `127.0.0.3:port`.
#[must_use]
pub fn pool_addrs(port: u16) -> [SocketAddr; 2] {
    POOL_IPS.map(|ip| SocketAddr::new(IpAddr::V4(ip), port))
}

/// Two gateway directories sharing `db`: the first made by `init` with [`POOL_SANS`] and
/// `store = db.url()`, the second a copy of it. Neither is started.
///
/// # Errors
/// When `init` fails or the files cannot be copied.
pub fn init_pool(root: &Path, db: &TestDatabase) -> anyhow::Result<(Gateway, Gateway)> {
    let d1 = root.join("gw1");
    let d2 = root.join("gw2");
    for d in [&d1, &d2] {
        std::fs::create_dir_all(d).with_context(|| format!("failed to create {}", d.display()))?;
    }
    let gw1 = Gateway::init(&d1, &POOL_SANS)?;
    gw1.set_config("store", db.url())?;
    for f in SHARED_FILES {
        std::fs::copy(d1.join(f), d2.join(f))
            .with_context(|| format!("failed to copy {f} to {}", d2.display()))?;
    }
    let gw2 = Gateway::open(&d2)?;
    Ok((gw1, gw2))
}
