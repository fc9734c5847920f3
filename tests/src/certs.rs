//! A private certificate authority made with `openssl` in a temporary
//! directory, issuing server certificates for `localhost` and 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A CA and the files of the certificates it issued; removed when dropped.
pub struct TestCa {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

/// Runs `openssl` with `args`, which must succeed.
fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is needed (scripts/install-test-deps.sh installs it)");
    assert!(status.success(), "openssl {args:?} failed");
}

/// `openssl` arguments for a new P-256 key in `key`.
fn new_key(key: &str) -> [&str; 7] {
    [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key,
    ]
}

impl TestCa {
    /// A new CA.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        let (cert_text, key_text) = (cert.to_string_lossy(), key.to_string_lossy());
        let mut args = vec![
            "req",
            "-x509",
            "-days",
            "1",
            "-subj",
            "/CN=sessiond test CA",
        ];
        args.extend(new_key(&key_text));
        args.extend(["-out", &cert_text]);
        openssl(&args);
        Self { dir, cert, key }
    }

    /// The CA certificate (PEM) a client must trust.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// Issues a certificate for `localhost` and 127.0.0.1 with common name
    /// `name`: its chain file and key file (PEM).
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let path = |suffix: &str| self.dir.path().join(format!("{name}.{suffix}"));
        let (cert, key, csr, ext) = (path("pem"), path("key"), path("csr"), path("ext"));
        std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("ext file");
        let text = |p: &Path| p.to_string_lossy().into_owned();
        let (key_text, csr_text) = (text(&key), text(&csr));
        let subject = format!("/CN={name}");
        let mut args = vec!["req", "-subj", &subject];
        args.extend(new_key(&key_text));
        args.extend(["-out", &csr_text]);
        openssl(&args);
        openssl(&[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &csr_text,
            "-CA",
            &text(&self.cert),
            "-CAkey",
            &text(&self.key),
            "-CAcreateserial",
            "-extfile",
            &text(&ext),
            "-out",
            &text(&cert),
        ]);
        (cert, key)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
