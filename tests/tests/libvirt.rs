//! A real libvirt domain: the collector discovers it from libvirt's status files (name,
//! UUID, vCPUs, memory, state) and notices when it stops.
//!
//! The test uses the system libvirtd when one is running; otherwise, as root, it starts its
//! own `virtlogd` and `libvirtd` in the foreground for the test's duration (Debian 12's
//! libvirt 9.0 runs this way in a container without systemd: the D-Bus, dmidecode and
//! dnsmasq complaints it logs do not stop the QEMU driver). The guest is a transient
//! (`virsh create`) TCG domain with no disk and 48 MiB, destroyed at the end whatever
//! happens. It prints `SKIP:` with the reason when libvirt's tools are missing, the test
//! is not root, or the daemon or domain cannot be started here.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use outpost_tests::fixtures::{wait_show, COLLECTOR_TIMEOUT, ENROLL_TIMEOUT};
use outpost_tests::proc::{log_tail, run_bounded, Proc};
use outpost_tests::qemu;
use outpost_tests::{Collector, Gateway, Workdir};
use serde_json::Value;

const URI: &str = "qemu:///system";
const SOCKET: &str = "/run/libvirt/libvirt-sock";
/// The first domain start probes QEMU's capabilities, which takes a minute on a busy box.
const CREATE_TIMEOUT: Duration = Duration::from_secs(240);
const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP: {why}");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
            .unwrap_or(false)
    })
}

fn virsh(args: &[&str], timeout: Duration) -> anyhow::Result<(bool, String)> {
    let mut cmd = Command::new("virsh");
    cmd.arg("-c").arg(URI).args(args);
    let out = run_bounded(cmd, timeout)?;
    Ok((
        out.status.success(),
        format!("{}{}", out.stdout, out.stderr).trim().to_string(),
    ))
}

/// The daemons this test started (none when a system libvirtd was already running);
/// stopped with SIGTERM on drop so they remove their sockets.
struct Daemons(Vec<Proc>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for p in self.0.iter_mut().rev() {
            let _ = p.terminate();
        }
    }
}

/// Starts virtlogd and libvirtd unless libvirtd's socket is there; `Err(reason)` to skip.
fn libvirt_daemons(dir: &Path) -> Result<Daemons, String> {
    if Path::new(SOCKET).exists()
        && virsh(&["version"], Duration::from_secs(20)).is_ok_and(|(ok, _)| ok)
    {
        return Ok(Daemons(Vec::new()));
    }
    let mut started = Daemons(Vec::new());
    let log = dir.join("virtlogd.log");
    let mut cmd = Command::new("virtlogd");
    cmd.arg("--pid-file").arg(dir.join("virtlogd.pid"));
    started.0.push(
        Proc::spawn("virtlogd", cmd, &log).map_err(|e| format!("cannot start virtlogd: {e:#}"))?,
    );
    let log = dir.join("libvirtd.log");
    let mut cmd = Command::new("libvirtd");
    cmd.arg("--pid-file").arg(dir.join("libvirtd.pid"));
    started.0.push(
        Proc::spawn("libvirtd", cmd, &log).map_err(|e| format!("cannot start libvirtd: {e:#}"))?,
    );
    let up = outpost_tests::wait_for(
        "libvirtd to answer",
        DAEMON_TIMEOUT,
        Duration::from_millis(300),
        || {
            Ok(virsh(&["version"], Duration::from_secs(20))?
                .0
                .then_some(()))
        },
    );
    match up {
        Ok(()) => Ok(started),
        Err(e) => Err(format!(
            "libvirtd did not come up here ({e:#}); its log ends:\n{}",
            log_tail(&log, 15)
        )),
    }
}

/// A transient domain, destroyed on drop.
struct Domain {
    name: String,
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name], Duration::from_secs(60));
    }
}

fn domain_xml(name: &str, uuid: &str) -> String {
    format!(
        r"<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>48</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
  </devices>
</domain>
"
    )
}

fn vm_named<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["vms"].as_array()?.iter().find(|vm| vm["name"] == name)
}

#[test]
fn a_libvirt_domain_is_discovered_with_its_details_and_noticed_when_it_stops() -> anyhow::Result<()>
{
    if let Some(why) = qemu::unavailable() {
        skip(why);
        return Ok(());
    }
    for (tool, package) in [
        ("virsh", "libvirt-clients"),
        ("libvirtd", "libvirt-daemon-system"),
        ("virtlogd", "libvirt-daemon-system"),
    ] {
        if !on_path(tool) && !Path::new("/usr/sbin").join(tool).is_file() {
            skip(&format!("{tool} not found (make deps installs {package})"));
            return Ok(());
        }
    }
    if !is_root() {
        skip("libvirt's system daemon needs root here; run the test as root");
        return Ok(());
    }
    let wd = Workdir::new("libvirt")?;
    let daemons = match libvirt_daemons(&wd.subdir("libvirt")?) {
        Ok(d) => d,
        Err(why) => {
            skip(&why);
            return Ok(());
        }
    };
    let uuid = qemu::fresh_uuid();
    let name = format!("outpost-e2e-{}", &uuid[..8]);
    let xml = wd.join("domain.xml");
    std::fs::write(&xml, domain_xml(&name, &uuid))?;
    let (ok, out) = virsh(&["create", &xml.to_string_lossy()], CREATE_TIMEOUT)?;
    if !ok {
        skip(&format!(
            "libvirt runs but cannot start a TCG domain here: {out}"
        ));
        return Ok(());
    }
    let domain = Domain { name: name.clone() };

    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let token = gw.token_create("acme-libvirt", true, None, None)?;
    let mut col = Collector::configure(&wd.join("col"), &gw, &token, "1s")?;
    col.start()?;
    let id = col.enrollment_id(ENROLL_TIMEOUT)?;
    let v = wait_show(
        &gw,
        &id,
        "the libvirt domain in vms",
        COLLECTOR_TIMEOUT,
        |v| vm_named(v, &name).is_some_and(|vm| vm["state"] == "running"),
    )?;
    let vm = vm_named(&v, &name).cloned().unwrap_or(Value::Null);
    assert_eq!(vm["uuid"], uuid.as_str(), "{vm}");
    assert_eq!(vm["source"], "libvirt", "{vm}");
    assert_eq!(vm["vcpus"], 2, "{vm}");
    assert_eq!(vm["memory_bytes"], 48_u64 << 20, "{vm}");
    // Seen once, from libvirt — not a second time as a bare QEMU process.
    let same = v["vms"].as_array().map_or(0, |a| {
        a.iter().filter(|x| x["uuid"] == uuid.as_str()).count()
    });
    assert_eq!(same, 1, "{v}");

    let (ok, out) = virsh(&["destroy", &name], Duration::from_secs(60))?;
    assert!(ok, "virsh destroy: {out}");
    std::mem::forget(domain);
    wait_show(
        &gw,
        &id,
        "the stopped domain gone from vms",
        COLLECTOR_TIMEOUT,
        |v| vm_named(v, &name).is_none(),
    )?;
    drop(daemons);
    Ok(())
}
