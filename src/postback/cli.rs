//! `clickedge network …`: register affiliate networks, show them, rotate
//! their secrets, remove them. Writes go to `networks.log`; a running
//! `serve` picks them up within `links.reload_interval_ms`.
//!
//! Secrets and tokens are printed once, by `add` and `rotate`, and stored
//! only sealed; `list` never shows them.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::Utc;
use rand::Rng;

use super::networks::{
    is_valid_name, normalize_currency, AuthMode, NetworkError, NetworkRecord, NetworkSettings,
    NetworkStore, ParamMap,
};
use super::sealed::{Field, Sealer};
use super::Status;
use crate::config::Config;
use crate::keys::{MasterKey, MASTER_KEY_ENV};

const SECRET_PREFIX: &str = "ces_";
const TOKEN_PREFIX: &str = "cet_";
/// Shortest secret or token accepted from `--secret` / `--token`.
const MIN_CREDENTIAL_LEN: usize = 16;
const MAX_CREDENTIAL_LEN: usize = 256;

#[derive(clap::Subcommand)]
pub enum NetworkCommand {
    /// Register a network; prints {"name","secret","token"} (shown only now).
    Add {
        name: String,
        /// HMAC secret for signed POSTs (default: 256 random bits).
        #[arg(long)]
        secret: Option<String>,
        /// Token for GET postbacks (default: 256 random bits).
        #[arg(long)]
        token: Option<String>,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Change a network's settings; flags not given keep their values.
    Update {
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// List networks and their settings (never secrets or tokens).
    List,
    /// Replace a network's secret; the previous one stays valid for the grace period.
    Rotate {
        name: String,
        /// How long the previous secret stays valid (default `postback.rotation_grace`).
        #[arg(long)]
        grace: Option<String>,
        /// The new secret (default: 256 random bits).
        #[arg(long)]
        secret: Option<String>,
    },
    /// Remove a network: its postbacks answer 404 from then on.
    Remove { name: String },
}

/// Per-network settings, as flags.
#[derive(clap::Args, Default)]
pub struct SettingsArgs {
    /// Start from a dialect's parameter and status maps: keitaro, voluum, everflow, binom.
    #[arg(long)]
    preset: Option<String>,
    /// Accepted auth modes: hmac (signed POST), token (GET), or both (default).
    #[arg(long, value_delimiter = ',')]
    auth: Option<Vec<String>>,
    /// Second factor: only these client IPs/CIDRs may post (repeat or comma-separate; `none` clears).
    #[arg(long = "allowed-ip", value_delimiter = ',')]
    allowed_ips: Option<Vec<String>>,
    /// FIELD=NAME: read FIELD (click_id, txn_id, status, payout, currency, occurred_at) from NAME.
    #[arg(long = "param")]
    params: Vec<String>,
    /// STATUS=V1,V2: network values meaning STATUS (pending, approved, rejected, reversed).
    #[arg(long = "status")]
    statuses: Vec<String>,
    /// Status of postbacks that carry none (default approved).
    #[arg(long)]
    default_status: Option<String>,
    /// Attribution window, e.g. 30d (default 30d).
    #[arg(long)]
    window: Option<String>,
    /// Currency of postbacks that carry none (default USD).
    #[arg(long)]
    currency: Option<String>,
}

/// A dialect's maps, from the examples in the contract.
fn preset(name: &str) -> anyhow::Result<NetworkSettings> {
    let mut s = NetworkSettings::default();
    let mut p = ParamMap::default();
    match name {
        "keitaro" => {
            p.click_id = "subid".into();
            p.txn_id = "tid".into();
            s.statuses.insert(Status::Pending, vec!["lead".into()]);
            s.statuses
                .insert(Status::Approved, vec!["sale".into(), "rebill".into()]);
        }
        "voluum" => {
            p.click_id = "cid".into();
            p.txn_id = "txid".into();
        }
        "everflow" => {
            p.click_id = "transaction_id".into();
            p.txn_id = "conversion_id".into();
            p.payout = "amount".into();
        }
        "binom" => {
            p.click_id = "cnv_id".into();
            p.txn_id = "txid".into();
            p.status = "cnv_status".into();
        }
        other => {
            anyhow::bail!("--preset: `{other}` is not one of keitaro, voluum, everflow, binom")
        }
    }
    s.params = p;
    Ok(s)
}

impl SettingsArgs {
    /// Applies the flags over `base`, then validates.
    fn apply(self, mut s: NetworkSettings) -> anyhow::Result<NetworkSettings> {
        if let Some(p) = &self.preset {
            let fresh = preset(p)?;
            s.params = fresh.params;
            s.statuses = fresh.statuses;
        }
        if let Some(modes) = self.auth {
            s.auth = modes
                .iter()
                .map(|m| match m.as_str() {
                    "hmac" => Ok(AuthMode::Hmac),
                    "token" => Ok(AuthMode::Token),
                    other => anyhow::bail!("--auth: `{other}` is not hmac or token"),
                })
                .collect::<anyhow::Result<_>>()?;
            s.auth.dedup();
        }
        if let Some(ips) = self.allowed_ips {
            s.allowed_ips = ips
                .into_iter()
                .filter(|ip| ip != "none" && !ip.is_empty())
                .collect();
        }
        for kv in self.params {
            let (field, name) = kv
                .split_once('=')
                .with_context(|| format!("--param: `{kv}` is not FIELD=NAME"))?;
            s.params.set(field, name)?;
        }
        for kv in self.statuses {
            let (status, values) = kv
                .split_once('=')
                .with_context(|| format!("--status: `{kv}` is not STATUS=VALUE[,VALUE…]"))?;
            let status = Status::parse(status).with_context(|| {
                format!("--status: `{status}` is not pending, approved, rejected or reversed")
            })?;
            s.statuses.insert(
                status,
                values
                    .split(',')
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
        }
        if let Some(d) = self.default_status {
            s.default_status = Status::parse(&d).with_context(|| {
                format!("--default-status: `{d}` is not pending, approved, rejected or reversed")
            })?;
        }
        if let Some(w) = self.window {
            s.attribution_window_secs = humantime::parse_duration(&w)
                .map_err(|e| anyhow::anyhow!("--window: {e}"))?
                .as_secs();
        }
        if let Some(c) = self.currency {
            s.currency = normalize_currency(&c)
                .with_context(|| format!("--currency: `{c}` is not a 3-letter code"))?;
        }
        s.validate()?;
        Ok(s)
    }
}

/// A fresh random credential: 256 bits, base64url.
/// A fresh HMAC secret, as `network add` and `rotate` make one.
pub fn random_secret() -> String {
    random_credential(SECRET_PREFIX)
}

fn random_credential(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    format!("{prefix}{}", data_encoding::BASE64URL_NOPAD.encode(&bytes))
}

fn given_credential(flag: &str, v: Option<String>, prefix: &str) -> anyhow::Result<String> {
    match v {
        None => Ok(random_credential(prefix)),
        Some(s)
            if (MIN_CREDENTIAL_LEN..=MAX_CREDENTIAL_LEN).contains(&s.len())
                && s.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(s)
        }
        Some(_) => anyhow::bail!(
            "{flag}: must be {MIN_CREDENTIAL_LEN}-{MAX_CREDENTIAL_LEN} printable ASCII characters"
        ),
    }
}

pub fn run(config: &Config, cmd: NetworkCommand) -> anyhow::Result<()> {
    crate::fsutil::create_private_dir(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let env_key = std::env::var(MASTER_KEY_ENV).ok();
    let (master, _) = MasterKey::load(
        env_key.as_deref(),
        config.master_key_file.as_deref(),
        &config.data_dir,
        true,
    )?;
    let sealer = Sealer::new(&master);
    let store = NetworkStore::open(&config.data_dir)?;
    match cmd {
        NetworkCommand::Add {
            name,
            secret,
            token,
            settings,
        } => {
            anyhow::ensure!(
                is_valid_name(&name),
                "network name must be 1-64 chars of [A-Za-z0-9._-]"
            );
            let settings = settings.apply(NetworkSettings::default())?;
            let secret =
                zeroize::Zeroizing::new(given_credential("--secret", secret, SECRET_PREFIX)?);
            let token = zeroize::Zeroizing::new(given_credential("--token", token, TOKEN_PREFIX)?);
            let now = Utc::now();
            store.write(|all| {
                if all.get(&name).is_some_and(|r| !r.removed) {
                    return Err(NetworkError::Exists(name.clone()));
                }
                Ok(NetworkRecord {
                    name: name.clone(),
                    created_at: now,
                    updated_at: now,
                    removed: false,
                    secret: sealer.seal(&name, Field::Secret, secret.as_bytes()),
                    previous_secret: None,
                    previous_valid_until: None,
                    token: sealer.seal(&name, Field::Token, token.as_bytes()),
                    settings,
                })
            })?;
            println!(
                "{}",
                serde_json::json!({"name": name, "secret": *secret, "token": *token})
            );
        }
        NetworkCommand::Update { name, settings } => {
            let rec = store.write(|all| {
                let mut r = live(all, &name)?;
                r.settings =
                    settings
                        .apply(r.settings.clone())
                        .map_err(|e| NetworkError::Invalid {
                            key: "settings",
                            message: format!("{e:#}"),
                        })?;
                r.updated_at = Utc::now();
                Ok(r)
            })?;
            println!("{}", view(&rec));
        }
        NetworkCommand::List => {
            for rec in store.list() {
                println!("{}", view(&rec));
            }
        }
        NetworkCommand::Rotate {
            name,
            grace,
            secret,
        } => {
            let grace = match grace {
                Some(g) => {
                    humantime::parse_duration(&g).map_err(|e| anyhow::anyhow!("--grace: {e}"))?
                }
                None => config.postback.rotation_grace,
            };
            let secret =
                zeroize::Zeroizing::new(given_credential("--secret", secret, SECRET_PREFIX)?);
            let rec = super::networks::rotate_secret(&store, &sealer, &name, grace, &secret)?;
            println!(
                "{}",
                serde_json::json!({
                    "name": rec.name,
                    "secret": *secret,
                    "previous_valid_until": rec.previous_valid_until.map(|t| crate::time::rfc3339(t.timestamp_millis())),
                })
            );
        }
        NetworkCommand::Remove { name } => {
            store.remove(&name)?;
            println!("{}", serde_json::json!({"name": name, "removed": true}));
        }
    }
    Ok(())
}

fn live(all: &BTreeMap<String, NetworkRecord>, name: &str) -> Result<NetworkRecord, NetworkError> {
    all.get(name)
        .filter(|r| !r.removed)
        .cloned()
        .ok_or_else(|| NetworkError::NotFound(name.to_owned()))
}

/// What `list` and `update` show: everything but the sealed values.
fn view(r: &NetworkRecord) -> serde_json::Value {
    let s = &r.settings;
    serde_json::json!({
        "name": r.name,
        "auth": s.auth,
        "allowed_ips": s.allowed_ips,
        "params": s.params,
        "statuses": s.statuses,
        "default_status": s.default_status,
        "attribution_window_secs": s.attribution_window_secs,
        "currency": s.currency,
        "created_at": crate::time::rfc3339(r.created_at.timestamp_millis()),
        "updated_at": crate::time::rfc3339(r.updated_at.timestamp_millis()),
        "previous_secret_valid_until": r.previous_valid_until.map(|t| crate::time::rfc3339(t.timestamp_millis())),
    })
}

#[cfg(test)]
mod tests {
    use super::super::networks::DEFAULT_WINDOW_SECS;
    use super::*;

    #[test]
    fn presets_and_flags_build_valid_settings() {
        let s = SettingsArgs {
            preset: Some("keitaro".into()),
            statuses: vec!["approved=sale,confirmed,1".into()],
            window: Some("7d".into()),
            currency: Some("eur".into()),
            ..SettingsArgs::default()
        }
        .apply(NetworkSettings::default())
        .unwrap();
        assert_eq!(s.params.click_id, "subid");
        assert_eq!(s.statuses[&Status::Approved], ["sale", "confirmed", "1"]);
        assert_eq!(s.attribution_window_secs, 7 * 86_400);
        assert_eq!(s.currency, "EUR");
        assert_eq!(
            NetworkSettings::default().attribution_window_secs,
            DEFAULT_WINDOW_SECS
        );
        let bad = SettingsArgs {
            params: vec!["clickid=x".into()],
            ..SettingsArgs::default()
        }
        .apply(NetworkSettings::default());
        assert!(bad.unwrap_err().to_string().contains("--param"));
    }

    #[test]
    fn generated_credentials_are_long_and_distinct() {
        let a = random_credential(SECRET_PREFIX);
        assert!(a.len() >= 40);
        assert_ne!(a, random_credential(SECRET_PREFIX));
        assert!(given_credential("--secret", Some("short".into()), "").is_err());
    }
}
