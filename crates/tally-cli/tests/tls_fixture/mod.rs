//! What the `tally serve` tests share: certificates made at test time, tokens made by
//! `tally token`, a real `tally serve` process, and gRPC clients over TLS.
#![allow(clippy::unwrap_used, dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use tally_proto::LedgerClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub fn tally() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tally"))
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    pub fn identity(&self) -> Identity {
        Identity::from_pem(
            std::fs::read(&self.cert).unwrap(),
            std::fs::read(&self.key).unwrap(),
        )
    }
}

/// A CA, a server certificate for 127.0.0.1 and localhost signed by it, a client
/// certificate signed by it, and a client certificate from another CA.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server: Pair,
    pub client: Pair,
    pub stranger: Pair,
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

fn new_leaf(
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'static, KeyPair>,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write_pair(dir: &Path, name: &str, (cert, key): (String, String)) -> Pair {
    let pair = Pair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&pair.cert, cert).unwrap();
    std::fs::write(&pair.key, key).unwrap();
    pair
}

impl Pki {
    /// Makes every certificate and writes them under `dir`.
    pub fn new(dir: &Path) -> Pki {
        let (ca_pem, ca) = new_ca("Tally test CA");
        let (other_pem, other) = new_ca("Another CA");
        let server = new_leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
        );
        let client = new_leaf(&["client"], ExtendedKeyUsagePurpose::ClientAuth, &ca);
        let stranger = new_leaf(&["stranger"], ExtendedKeyUsagePurpose::ClientAuth, &other);
        let pki = Pki {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server: write_pair(dir, "server", server),
            client: write_pair(dir, "client", client),
            stranger: write_pair(dir, "stranger", stranger),
        };
        std::fs::write(&pki.ca, ca_pem).unwrap();
        std::fs::write(&pki.other_ca, other_pem).unwrap();
        pki
    }
}

/// Runs `tally token` and returns the token it prints.
pub fn make_token(file: &Path, name: &str, operations: &str, ledgers: &str) -> String {
    let output = tally()
        .args(["token", "--name", name, "--operations", operations])
        .args(["--ledgers", ledgers, "--file"])
        .arg(file)
        .output()
        .unwrap();
    assert!(output.status.success(), "tally token: {output:?}");
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("tly_"), "{token}");
    token
}

/// A running `tally serve`; stopped with SIGTERM by [`Served::stop`], killed on drop.
#[derive(Debug)]
pub struct Served {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    pub addr: SocketAddr,
    stderr: PathBuf,
}

impl Served {
    /// Starts `tally serve --data DATA --shards 1 ARGS` (on 127.0.0.1, a free port,
    /// unless ARGS has `--listen`) and waits for its `listening on ADDR` line; panics
    /// with its stderr if it exits first.
    pub fn start(data: &Path, args: &[&str]) -> Served {
        let stderr = data.with_extension("stderr");
        let mut command = tally();
        command.args(["serve", "--data"]).arg(data);
        command.args(["--shards", "1"]).args(args);
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let status = child.wait().unwrap();
            let log = std::fs::read_to_string(&stderr).unwrap();
            panic!("tally serve {args:?} did not start ({status}): {log}");
        };
        Served {
            addr: addr.parse().unwrap(),
            child,
            _stdout: stdout,
            stderr,
        }
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap()
    }

    /// SIGTERM, then the exit status must be success.
    pub fn stop(mut self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM");
        let status = self.child.wait().unwrap();
        let log = std::fs::read_to_string(&self.stderr).unwrap();
        assert!(status.success(), "tally serve exited {status}: {log}");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sets the `authorization` header of every call to a fixed value, or none.
#[derive(Debug, Clone)]
pub struct Auth(Option<AsciiMetadataValue>);

impl Auth {
    pub fn bearer(token: &str) -> Auth {
        Auth::header(&format!("Bearer {token}"))
    }

    pub fn header(value: &str) -> Auth {
        Auth(Some(MetadataValue::try_from(value).unwrap()))
    }

    pub fn none() -> Auth {
        Auth(None)
    }
}

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Client = LedgerClient<InterceptedService<Channel, Auth>>;

/// How a client reaches the server.
#[derive(Debug, Clone)]
pub struct Dial {
    /// `None` speaks plain text.
    pub ca: Option<PathBuf>,
    pub identity: Option<Pair>,
}

impl Dial {
    pub fn tls(ca: &Path) -> Dial {
        Dial {
            ca: Some(ca.to_path_buf()),
            identity: None,
        }
    }

    pub fn plain() -> Dial {
        Dial {
            ca: None,
            identity: None,
        }
    }

    pub fn with_identity(mut self, pair: &Pair) -> Dial {
        self.identity = Some(pair.clone());
        self
    }

    /// Connects (TCP, TLS when asked, HTTP/2); the error as text.
    pub async fn connect(&self, addr: SocketAddr, auth: Auth) -> Result<Client, String> {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{}", addr.port());
        let mut endpoint = Channel::from_shared(url)
            .unwrap()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(10));
        if let Some(ca) = &self.ca {
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
                .domain_name("localhost");
            if let Some(pair) = &self.identity {
                tls = tls.identity(pair.identity());
            }
            endpoint = endpoint.tls_config(tls).unwrap();
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|error| format!("connect: {error:?}"))?;
        Ok(LedgerClient::with_interceptor(channel, auth))
    }
}
