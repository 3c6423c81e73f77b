//! A guest's view of the identity document: fetch document, signature and pkcs7 from
//! imdsd and verify them with the openssl CLI exactly as docs/imds.md tells guests to.

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use common::*;
use serde_json::json;

fn openssl(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(system_tool("openssl"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl")
}

fn make_certificate(dir: &Path, stem: &str) {
    let output = openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=imds identity test",
            "-keyout",
            &format!("{stem}-key.pem"),
            "-out",
            &format!("{stem}-cert.pem"),
        ],
        dir,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn fetch(daemon: &Daemon, leaf: &str) -> String {
    let mut stream = connect(daemon.port);
    let response = send(
        &mut stream,
        &format!("GET /latest/dynamic/instance-identity/{leaf} HTTP/1.1\r\n\r\n"),
    );
    assert_eq!(response.status, 200, "{leaf}");
    response.body
}

#[test]
fn served_identity_document_verifies_with_openssl() {
    let dir = scratch_dir("identity-openssl");
    make_certificate(&dir, "host");
    make_certificate(&dir, "unrelated");
    let config = host_config(vec![instance_json(
        "i-0eeeeeeeeeeeeeee5",
        "127.0.0.1",
        json!({}),
    )]);
    let key = dir.join("host-key.pem").display().to_string();
    let cert = dir.join("host-cert.pem").display().to_string();
    let daemon = Daemon::start(
        &dir,
        &config,
        &["--signing-key", &key, "--signing-cert", &cert],
    );

    let document = fetch(&daemon, "document");
    let signature = fetch(&daemon, "signature");
    let pkcs7 = fetch(&daemon, "pkcs7");
    let parsed: serde_json::Value = serde_json::from_str(&document).expect("document is JSON");
    assert_eq!(parsed["instanceId"], "i-0eeeeeeeeeeeeeee5");
    std::fs::write(dir.join("document"), &document).expect("write");
    std::fs::write(
        dir.join("tampered"),
        document.replace("m5.large", "m5.24xlarge"),
    )
    .expect("write");
    // As docs/imds.md: EC2 serves the PKCS#7 without PEM armour; the guest adds it.
    std::fs::write(
        dir.join("pkcs7.pem"),
        format!("-----BEGIN PKCS7-----\n{pkcs7}\n-----END PKCS7-----\n"),
    )
    .expect("write");
    let raw_signature = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .expect("signature is base64");
    std::fs::write(dir.join("signature.bin"), raw_signature).expect("write");

    // PKCS#7, trusting only the host's certificate (full chain check, self-signed root).
    let verify_pkcs7 = |content: &str, ca: &str| {
        openssl(
            &[
                "smime",
                "-verify",
                "-in",
                "pkcs7.pem",
                "-inform",
                "PEM",
                "-content",
                content,
                "-CAfile",
                ca,
                "-purpose",
                "any",
            ],
            &dir,
        )
    };
    let verified = verify_pkcs7("document", "host-cert.pem");
    assert!(
        verified.status.success(),
        "openssl smime -verify failed: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&verified.stdout), document);
    assert!(String::from_utf8_lossy(&verified.stderr).contains("Verification successful"));
    assert!(!verify_pkcs7("tampered", "host-cert.pem").status.success());
    assert!(!verify_pkcs7("document", "unrelated-cert.pem")
        .status
        .success());

    // The same with `openssl cms` and -noverify (signature only, certificate given).
    let cms = openssl(
        &[
            "cms",
            "-verify",
            "-in",
            "pkcs7.pem",
            "-inform",
            "PEM",
            "-content",
            "document",
            "-certfile",
            "host-cert.pem",
            "-noverify",
            "-binary",
        ],
        &dir,
    );
    assert!(
        cms.status.success(),
        "{}",
        String::from_utf8_lossy(&cms.stderr)
    );

    // The certificate the daemon publishes is the one that verifies.
    let published = run_ok(
        Command::new(env!("CARGO_BIN_EXE_imdsd"))
            .arg("--config")
            .arg(&daemon.config_path)
            .args([
                "--signing-key",
                &key,
                "--signing-cert",
                &cert,
                "--print-certificate",
            ]),
    );
    std::fs::write(dir.join("published.pem"), &published).expect("write");
    assert!(verify_pkcs7("document", "published.pem").status.success());

    // The RSA-SHA256 signature against the certificate's public key.
    let public_key = openssl(&["x509", "-pubkey", "-noout", "-in", "published.pem"], &dir);
    std::fs::write(dir.join("host-pub.pem"), &public_key.stdout).expect("write");
    let verify_signature = |content: &str| {
        openssl(
            &[
                "dgst",
                "-sha256",
                "-verify",
                "host-pub.pem",
                "-signature",
                "signature.bin",
                content,
            ],
            &dir,
        )
    };
    let good = verify_signature("document");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&good.stdout).trim(), "Verified OK");
    assert!(!verify_signature("tampered").status.success());
}

#[test]
fn mismatched_key_and_certificate_stop_the_daemon_with_a_clear_error() {
    let dir = scratch_dir("identity-mismatch");
    make_certificate(&dir, "one");
    make_certificate(&dir, "two");
    let config_path = dir.join("config.json");
    let config = host_config(vec![instance_json("i-1", "127.0.0.1", json!({}))]);
    std::fs::write(&config_path, serde_json::to_vec(&config).expect("json")).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_imdsd"))
        .arg("--config")
        .arg(&config_path)
        .args(["--listen", "127.0.0.1:0", "--signing-key"])
        .arg(dir.join("one-key.pem"))
        .arg("--signing-cert")
        .arg(dir.join("two-cert.pem"))
        .output()
        .expect("run imdsd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not for this private key"), "{stderr}");
}
