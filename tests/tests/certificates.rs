//! The CA's side of enrolment: which CSRs it refuses (garbage, a broken signature, a weak
//! key) and what it puts in the certificates it issues — its own decision, whatever the CSR
//! asks for.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use outpost_tests::fixtures::ENROLL_TIMEOUT;
use outpost_tests::pki::{corrupt_csr_signature, csr_pem, csr_pem_with, new_key};
use outpost_tests::{ApplianceClient, Gateway, Workdir};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

const DAY: i64 = 86_400;

fn unix_now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
    )
    .unwrap_or(0)
}

async fn enrol_with_csr(gw: &Gateway, csr: &str) -> anyhow::Result<outpost_tests::HttpReply> {
    let token = gw.token_create("acme-corp", true, None, None)?;
    let app = ApplianceClient::new(gw.addr(), &gw.ca_pem()?)?;
    app.enroll_with_csr(Some(&token), csr).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_csr_is_refused_as_invalid() -> anyhow::Result<()> {
    let wd = Workdir::new("csr-garbage")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let garbage =
        "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n";
    for csr in [garbage, "hello", ""] {
        let r = enrol_with_csr(&gw, csr).await?;
        assert_eq!(r.status, 400, "CSR {csr:?}: {}", r.describe());
        assert_eq!(
            r.error_code().as_deref(),
            Some("csr_invalid"),
            "CSR {csr:?}: {}",
            r.describe()
        );
    }
    assert_eq!(gw.list_json()?.as_array().map(Vec::len), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csr_whose_signature_does_not_verify_is_refused() -> anyhow::Result<()> {
    let wd = Workdir::new("csr-badsig")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let key = new_key()?;
    let bad = corrupt_csr_signature(&csr_pem(&key, "tampered")?)?;
    let r = enrol_with_csr(&gw, &bad).await?;
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(
        r.error_code().as_deref(),
        Some("csr_invalid"),
        "{}",
        r.describe()
    );
    assert_eq!(gw.list_json()?.as_array().map(Vec::len), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_1024_csr_is_refused_as_weak_key() -> anyhow::Result<()> {
    if Command::new("openssl").arg("version").output().is_err() {
        println!(
            "SKIP: rsa_1024_csr_is_refused_as_weak_key: openssl not found (make deps installs it)"
        );
        return Ok(());
    }
    let wd = Workdir::new("csr-weak")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let out = Command::new("openssl")
        .args([
            "req", "-new", "-newkey", "rsa:1024", "-nodes", "-subj", "/CN=x",
        ])
        .arg("-keyout")
        .arg(wd.join("weak-key.pem"))
        .arg("-out")
        .arg(wd.join("weak.csr"))
        .output()?;
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csr = std::fs::read_to_string(wd.join("weak.csr"))?;
    let r = enrol_with_csr(&gw, &csr).await?;
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(
        r.error_code().as_deref(),
        Some("csr_weak_key"),
        "{}",
        r.describe()
    );
    assert_eq!(gw.list_json()?.as_array().map(Vec::len), Some(0));
    Ok(())
}

fn parse_cert(pem_text: &str) -> anyhow::Result<Vec<u8>> {
    Ok(pem::parse(pem_text)?.contents().to_vec())
}

/// Asserts the shape every appliance certificate must have, whatever its CSR asked for.
fn assert_appliance_certificate(
    cert: &X509Certificate<'_>,
    ca: &X509Certificate<'_>,
    lifetime_days: i64,
) {
    assert!(!cert.is_ca(), "appliance certificate is a CA");
    if let Some(bc) = cert.basic_constraints().expect("basic constraints parse") {
        assert!(!bc.value.ca, "basic constraints say CA:TRUE");
    }
    let ku = cert
        .key_usage()
        .expect("key usage parses")
        .expect("key usage present");
    assert!(
        ku.value.digital_signature(),
        "key usage lacks digitalSignature"
    );
    assert!(!ku.value.key_cert_sign(), "key usage grants keyCertSign");
    assert!(!ku.value.crl_sign(), "key usage grants cRLSign");
    let eku = cert
        .extended_key_usage()
        .expect("extended key usage parses")
        .expect("extended key usage present");
    assert!(eku.value.server_auth, "EKU lacks serverAuth");
    assert!(eku.value.client_auth, "EKU lacks clientAuth");

    assert_eq!(cert.issuer(), ca.subject(), "issuer is not the Outpost CA");
    cert.verify_signature(Some(ca.public_key()))
        .expect("certificate signature verifies with the CA key");

    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    let now = unix_now();
    assert!(
        nb <= now + 60,
        "not_before {nb} is in the future (now {now})"
    );
    let span = na - nb;
    assert!(
        (span - lifetime_days * DAY).abs() <= DAY,
        "validity spans {} s, expected about {lifetime_days} days",
        span
    );
    assert!(
        (na - now - lifetime_days * DAY).abs() <= DAY,
        "not_after {na} is not about {lifetime_days} days from now ({now})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_certificate_is_the_cas_decision_not_the_csrs() -> anyhow::Result<()> {
    let wd = Workdir::new("cert-shape")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let ca_pem = gw.ca_pem()?;
    let ca_der = parse_cert(&ca_pem)?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)?;
    let token = gw.token_create("acme-corp", true, None, Some(2))?;

    // A CSR that asks to be a CA, for extra names and for certificate signing.
    let mut greedy = ApplianceClient::new(gw.addr(), &ca_pem)?;
    let mut params =
        CertificateParams::new(vec!["evil.example.com".to_string(), "10.9.8.7".to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "i-want-to-be-a-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let csr = csr_pem_with(&params, greedy.key())?;
    greedy.enroll_ok_with_csr(&token, &csr).await?;
    let greedy_pem = greedy.wait_certificate(&token, ENROLL_TIMEOUT).await?;
    let greedy_der = parse_cert(&greedy_pem)?;
    let (_, greedy_cert) = x509_parser::parse_x509_certificate(&greedy_der)?;
    assert_appliance_certificate(&greedy_cert, &ca, 90);
    if let Some(san) = greedy_cert.subject_alternative_name()? {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => {
                    assert_ne!(*d, "evil.example.com", "CSR-requested DNS SAN copied")
                }
                GeneralName::IPAddress(ip) => {
                    assert_ne!(*ip, &[10, 9, 8, 7][..], "CSR-requested IP SAN copied")
                }
                _ => {}
            }
        }
    }

    // A second appliance gets its own serial.
    let mut plain = ApplianceClient::new(gw.addr(), &ca_pem)?;
    plain.enroll_and_fetch(&token, ENROLL_TIMEOUT).await?;
    let plain_der = parse_cert(plain.cert_pem().expect("certificate fetched"))?;
    let (_, plain_cert) = x509_parser::parse_x509_certificate(&plain_der)?;
    assert_appliance_certificate(&plain_cert, &ca, 90);
    assert_ne!(
        greedy_cert.raw_serial(),
        plain_cert.raw_serial(),
        "two appliances share a serial"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_lifetime_in_gateway_toml_sets_the_validity() -> anyhow::Result<()> {
    let wd = Workdir::new("cert-lifetime")?;
    let mut gw = Gateway::init_loopback(&wd.subdir("gw")?)?;
    gw.set_config("cert_lifetime", "30d")?;
    gw.start()?;
    let ca_pem = gw.ca_pem()?;
    let ca_der = parse_cert(&ca_pem)?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)?;
    let app = outpost_tests::fixtures::approved_appliance(&gw, "acme-corp").await?;
    let der = parse_cert(app.cert_pem().expect("certificate fetched"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    assert_appliance_certificate(&cert, &ca, 30);
    // The certificate in hand works on an mTLS route.
    let r = app.get(outpost_proto::paths::CONFIG).await?;
    assert_eq!(r.status, 200, "{}", r.describe());
    Ok(())
}
