//! A sandbox: the merchant's and WeChat's keys, the APIv3 key and ids, in memory or in a folder.
//!
//! `wechatpay-sim init DIR` writes (all PEM files are test-only keys made on this machine):
//!
//! | file | what |
//! |---|---|
//! | `sandbox.json` | mchid, appids, brandid, serials, public-key id, trust mode |
//! | `merchant/apiclient_key.pem` | merchant private key (PKCS#8) — what `wxpay` signs with |
//! | `merchant/apiclient_cert.pem` | merchant API certificate (its serial is in `sandbox.json`) |
//! | `wechat/platform_cert.pem` | WeChat platform certificate — trust it in certificate mode |
//! | `wechat/platform_key.pem` | the simulator's platform private key (WeChat's side) |
//! | `wechat/pub_key.pem` | WeChat Pay public key — trust it as `PUB_KEY_ID_…` in public-key mode |
//! | `wechat/pub_key_private.pem` | the simulator's public-key-mode private key (WeChat's side) |
//! | `apiv3.key` | the 32-character APIv3 key |
//! | `wxpay.env` | `WECHATPAY_*` lines (absolute paths) so `wxpay` talks to the simulator |

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use serde::{Deserialize, Serialize};
use wechatpay::testing::keys;
use wechatpay::trust::TrustStore;
use wechatpay::{ApiV3Key, PrivateKey, PublicKey};

/// How the simulated WeChat signs its answers and callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TrustMode {
    /// Platform certificate.
    #[default]
    Cert,
    /// WeChat Pay public key only (`/v3/certificates` answers `RESOURCE_NOT_EXISTS`).
    Pubkey,
    /// During the switch: public key when the request carries `Wechatpay-Serial: PUB_KEY_ID_…`.
    Migrating,
}

/// The ids and settings saved in `sandbox.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// Merchant id.
    pub mchid: String,
    /// Mini-program appids members authorize with.
    pub appids: Vec<String>,
    /// Brand id for commit_status and parkings.
    pub brandid: i64,
    /// Mall name used in callbacks.
    pub merchant_name: String,
    /// Merchant API certificate serial.
    pub merchant_serial: String,
    /// Platform certificate serial.
    pub platform_serial: String,
    /// WeChat Pay public key id.
    pub pubkey_id: String,
    /// Trust mode.
    pub mode: TrustMode,
}

/// Keys and ids of one simulated merchant. `Debug` shows ids only.
#[derive(Clone)]
pub struct Sandbox {
    /// Ids and settings.
    pub info: SandboxInfo,
    /// Verifies the merchant's request signatures.
    pub merchant_public: PublicKey,
    /// Platform signing key.
    pub platform_key: Arc<PrivateKey>,
    /// Platform certificate PEM.
    pub platform_cert_pem: String,
    /// Public-key-mode signing key.
    pub pubkey_key: Arc<PrivateKey>,
    /// Public key PEM.
    pub pubkey_pem: String,
    /// APIv3 key.
    pub apiv3_key: ApiV3Key,
    /// The APIv3 key's text (a sandbox key; needed to configure clients).
    pub apiv3_key_text: String,
    /// Merchant private key PEM (only for building SDK clients in tests and `wxpay.env`).
    pub merchant_key_pem: String,
    /// The folder it lives in, if any.
    pub dir: Option<PathBuf>,
}

impl Sandbox {
    /// The committed test-only keys, in memory.
    pub fn test(mode: TrustMode) -> Self {
        let cert =
            wechatpay::trust::parse_certificate_pem(keys::MERCHANT_CERT_PEM).expect("test cert");
        Self {
            info: SandboxInfo {
                mchid: keys::MCHID.into(),
                appids: vec!["wx1234567890abcdef".into(), "wx931386123456789e".into()],
                brandid: 1000,
                merchant_name: "测试广场".into(),
                merchant_serial: keys::MERCHANT_SERIAL.into(),
                platform_serial: keys::PLATFORM_SERIAL.into(),
                pubkey_id: keys::PUBKEY_ID.into(),
                mode,
            },
            merchant_public: PublicKey::from_der(&cert.spki_der).expect("test key"),
            platform_key: Arc::new(PrivateKey::from_pem(keys::PLATFORM_KEY_PEM).expect("test key")),
            platform_cert_pem: keys::PLATFORM_CERT_PEM.into(),
            pubkey_key: Arc::new(PrivateKey::from_pem(keys::PUBKEY_KEY_PEM).expect("test key")),
            pubkey_pem: keys::PUBKEY_PEM.into(),
            apiv3_key: ApiV3Key::new(keys::APIV3_KEY).expect("test key"),
            apiv3_key_text: keys::APIV3_KEY.into(),
            merchant_key_pem: keys::MERCHANT_KEY_PEM.into(),
            dir: None,
        }
    }

    /// What a merchant should trust in this mode.
    pub fn trust_store(&self) -> TrustStore {
        let mut t = TrustStore::new();
        if self.info.mode != TrustMode::Pubkey {
            t.add_certificate_pem(&self.platform_cert_pem)
                .expect("sandbox certificate");
        }
        if self.info.mode != TrustMode::Cert {
            t.add_public_key_pem(&self.info.pubkey_id, &self.pubkey_pem)
                .expect("sandbox public key");
        }
        t
    }

    /// An SDK client builder for this sandbox's merchant against `base_url` (no backup).
    pub fn client_builder(&self, base_url: &str) -> wechatpay::ClientBuilder {
        wechatpay::Client::builder()
            .mchid(&self.info.mchid)
            .serial(&self.info.merchant_serial)
            .private_key_pem(&self.merchant_key_pem)
            .apiv3_key(&self.apiv3_key_text)
            .trust_store(self.trust_store())
            .base_url(base_url)
            .backup_url(None)
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("info", &self.info)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Creates `dir` (and its parents) readable by the owner only (0700).
fn create_private_dir(dir: &Path) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Writes a file readable by the owner only (0600): every file of a sandbox, the private keys and
/// the APIv3 key among them, is written this way.
fn write(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path.parent() {
        create_private_dir(parent)?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn new_key() -> Result<(String, Vec<u8>)> {
    let kp = KeyPair::generate(KeySize::Rsa2048)
        .map_err(|e| anyhow::anyhow!("RSA key generation: {e}"))?;
    let der = kp
        .as_der()
        .map_err(|e| anyhow::anyhow!("PKCS#8 encoding: {e}"))?
        .as_ref()
        .to_vec();
    Ok((pem::encode(&pem::Pem::new("PRIVATE KEY", der.clone())), der))
}

fn random_serial() -> (String, Vec<u8>) {
    let mut raw = [0u8; 20];
    aws_lc_rs::rand::fill(&mut raw).expect("system random source");
    raw[0] = (raw[0] & 0x7f) | 0x10; // positive, no leading zero byte
    (
        raw.iter().map(|b| format!("{b:02X}")).collect(),
        raw.to_vec(),
    )
}

fn new_cert(key_der: &[u8], common_name: &str) -> Result<(String, String)> {
    let kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &key_der.to_vec().into(),
        &rcgen::PKCS_RSA_SHA256,
    )
    .context("loading key for certificate")?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).context("certificate params")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let (serial_hex, serial_raw) = random_serial();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial_raw));
    params.not_before =
        time::OffsetDateTime::from_unix_timestamp(wechatpay::clock::unix_ms() / 1000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
            - time::Duration::days(1);
    params.not_after =
        time::OffsetDateTime::from_unix_timestamp(wechatpay::clock::unix_ms() / 1000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
            + time::Duration::days(5 * 365);
    let cert = params.self_signed(&kp).context("signing certificate")?;
    Ok((cert.pem(), serial_hex))
}

impl Sandbox {
    /// Creates a fresh sandbox in `dir` (which must not hold one already) and returns it.
    pub fn init(dir: &Path, mode: TrustMode) -> Result<Self> {
        if dir.join("sandbox.json").exists() {
            bail!(
                "{} already holds a sandbox (sandbox.json); choose an empty folder",
                dir.display()
            );
        }
        create_private_dir(dir)?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let (merchant_key, merchant_der) = new_key()?;
        let (merchant_cert, merchant_serial) =
            new_cert(&merchant_der, "sandbox merchant (TEST ONLY)")?;
        let (platform_key, platform_der) = new_key()?;
        let (platform_cert, platform_serial) =
            new_cert(&platform_der, "sandbox WeChat Pay platform (TEST ONLY)")?;
        let (pubkey_private, _) = new_key()?;
        let pubkey_pem = pem::encode(&pem::Pem::new(
            "PUBLIC KEY",
            PrivateKey::from_pem(&pubkey_private)?.public_key_spki_der(),
        ));
        let apiv3 = wechatpay::crypto::random_token(32);
        let mut mchid = String::from("19");
        for b in wechatpay::crypto::random_token(8).bytes() {
            mchid.push(char::from(b'0' + b % 10));
        }
        let info = SandboxInfo {
            mchid,
            appids: vec!["wx1234567890abcdef".into(), "wx931386123456789e".into()],
            brandid: 1000,
            merchant_name: "沙盒广场".into(),
            merchant_serial,
            platform_serial,
            pubkey_id: format!("PUB_KEY_ID_{}", wechatpay::crypto::random_token(32)),
            mode,
        };
        write(&dir.join("merchant/apiclient_key.pem"), &merchant_key)?;
        write(&dir.join("merchant/apiclient_cert.pem"), &merchant_cert)?;
        write(&dir.join("wechat/platform_key.pem"), &platform_key)?;
        write(&dir.join("wechat/platform_cert.pem"), &platform_cert)?;
        write(&dir.join("wechat/pub_key_private.pem"), &pubkey_private)?;
        write(&dir.join("wechat/pub_key.pem"), &pubkey_pem)?;
        write(&dir.join("apiv3.key"), &format!("{apiv3}\n"))?;
        write(
            &dir.join("sandbox.json"),
            &serde_json::to_string_pretty(&info)?,
        )?;
        let sandbox = Self::load(&dir)?;
        sandbox.write_env("http://127.0.0.1:8600")?;
        Ok(sandbox)
    }

    /// Loads a sandbox written by [`Sandbox::init`].
    pub fn load(dir: &Path) -> Result<Self> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("no sandbox at {}", dir.display()))?;
        let info: SandboxInfo = serde_json::from_str(&read(&dir.join("sandbox.json"))?)
            .with_context(|| format!("parsing {}", dir.join("sandbox.json").display()))?;
        let merchant_cert = read(&dir.join("merchant/apiclient_cert.pem"))?;
        let parsed = wechatpay::trust::parse_certificate_pem(&merchant_cert)?;
        let apiv3_text = read(&dir.join("apiv3.key"))?.trim_end().to_string();
        Ok(Self {
            merchant_public: PublicKey::from_der(&parsed.spki_der)?,
            platform_key: Arc::new(PrivateKey::from_pem_file(
                dir.join("wechat/platform_key.pem"),
            )?),
            platform_cert_pem: read(&dir.join("wechat/platform_cert.pem"))?,
            pubkey_key: Arc::new(PrivateKey::from_pem_file(
                dir.join("wechat/pub_key_private.pem"),
            )?),
            pubkey_pem: read(&dir.join("wechat/pub_key.pem"))?,
            apiv3_key: ApiV3Key::new(&apiv3_text)?,
            apiv3_key_text: apiv3_text,
            merchant_key_pem: read(&dir.join("merchant/apiclient_key.pem"))?,
            info,
            dir: Some(dir),
        })
    }

    /// Writes `wxpay.env` for a simulator listening at `base_url`.
    pub fn write_env(&self, base_url: &str) -> Result<()> {
        let Some(dir) = &self.dir else {
            bail!("in-memory sandbox has no folder")
        };
        let mut trust = Vec::new();
        if self.info.mode != TrustMode::Pubkey {
            trust.push(dir.join("wechat/platform_cert.pem").display().to_string());
        }
        if self.info.mode != TrustMode::Cert {
            trust.push(format!(
                "{}={}",
                self.info.pubkey_id,
                dir.join("wechat/pub_key.pem").display()
            ));
        }
        let mut env =
            String::from("# wxpay settings for this sandbox: `set -a; . ./wxpay.env; set +a`\n");
        let _ = writeln!(env, "WECHATPAY_MCHID={}", self.info.mchid);
        let _ = writeln!(env, "WECHATPAY_SERIAL={}", self.info.merchant_serial);
        let _ = writeln!(
            env,
            "WECHATPAY_PRIVATE_KEY={}",
            dir.join("merchant/apiclient_key.pem").display()
        );
        let _ = writeln!(env, "WECHATPAY_TRUST={}", trust.join(","));
        let _ = writeln!(
            env,
            "WECHATPAY_APIV3_KEY_FILE={}",
            dir.join("apiv3.key").display()
        );
        let _ = writeln!(env, "WECHATPAY_BASE_URL={base_url}");
        write(&dir.join("wxpay.env"), &env)
    }
}
