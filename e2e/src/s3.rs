//! An S3-compatible object store on loopback for the object-store backup test: moto's
//! server (installed by scripts/setup.sh from hash-pinned PyPI wheels into
//! [`S3_DIR`]), over TLS with a certificate of a CA made for the test, one bucket,
//! ended by PID when dropped.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where scripts/setup.sh installs moto and its dependencies.
pub const S3_DIR: &str = "/opt/pgha-test-s3";
/// The bucket every test repository lives in.
pub const BUCKET: &str = "pgha";

pub struct S3Server {
    pub port: u16,
    /// The CA that signed the server's certificate (pgBackRest's `repo1-storage-ca-file`).
    pub ca_file: PathBuf,
    child: Child,
}

impl S3Server {
    /// Starts the server in `dir` (certificates, log) and creates [`BUCKET`].
    pub fn start(dir: &Path) -> anyhow::Result<S3Server> {
        if !Path::new(S3_DIR).join("moto").is_dir() {
            bail!("no S3 test server in {S3_DIR} (scripts/setup.sh installs it)");
        }
        std::fs::create_dir_all(dir)?;
        let ca_file = make_certificates(dir)?;
        let port = crate::free_port();
        let log = std::fs::File::create(dir.join("moto.log"))?;
        let launcher = dir.join("s3_server.py");
        std::fs::write(&launcher, include_str!("s3_server.py"))?;
        let child = Command::new("/usr/bin/python3.11")
            .arg("-s")
            .arg(&launcher)
            .args(["-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .arg("-c")
            .arg(dir.join("server.pem"))
            .arg("-k")
            .arg(dir.join("server.key"))
            .env("PYTHONPATH", S3_DIR)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting moto's server")?;
        let s = S3Server {
            port,
            ca_file,
            child,
        };
        let t0 = Instant::now();
        // moto creates a bucket on an unsigned PUT; the loop also waits for it to listen.
        while s.curl(&["-X", "PUT", &s.url(BUCKET)]).is_err() {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!(
                    "moto's server did not answer on port {port}; see {}",
                    dir.join("moto.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(s)
    }

    /// `https://localhost:PORT/PATH` (pgBackRest 2.45 matches a certificate's DNS
    /// names, not its IP addresses).
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}/{path}", self.port)
    }

    /// The keys of every object in [`BUCKET`] under `prefix`.
    pub fn list(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let xml = self.curl(&[&self.url(&format!("{BUCKET}?prefix={prefix}"))])?;
        Ok(xml
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect())
    }

    fn curl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
            .arg(&self.ca_file)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for `localhost` signed by it, with openssl; the CA
/// file's path (readable by the Postgres OS user, who runs pgBackRest).
fn make_certificates(dir: &Path) -> anyhow::Result<PathBuf> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=pgha-test-s3-ca",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ])?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n")?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ])?;
    use std::os::unix::fs::PermissionsExt;
    let ca = dir.join("ca.pem");
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644))?;
    Ok(ca)
}
