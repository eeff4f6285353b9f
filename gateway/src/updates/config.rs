//! The `[updates]` section: the TUF repository the gateway trusts
//! (`[updates.repository]`, see [`super::trust::UpdatesTrustConfig`]) and how the gateway
//! keeps its staged copies.

use serde::Deserialize;

use super::trust::UpdatesTrustConfig;

/// `[updates]`: cybersecurity updates for the site's devices.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatesConfig {
    /// The TUF repository: URLs, the root pinned at installation, the server's CA and the
    /// limits (`[updates.repository]`).
    pub repository: UpdatesTrustConfig,
    /// Disk space for verified targets staged for devices, bytes. A target that does
    /// not fit is not staged (alert); its assignment waits. Default 8 GiB.
    #[serde(default = "default_staging_budget_bytes")]
    pub staging_budget_bytes: u64,
    /// Seconds between refreshes of the TUF metadata. Each refresh checks freshness
    /// (a timestamp older than its expiry stops new staging), stages what active
    /// assignments need and removes what none needs. 60–86400; default 900.
    #[serde(default = "default_refresh_interval_secs")]
    pub refresh_interval_secs: u64,
}

const fn default_staging_budget_bytes() -> u64 {
    8 * 1024 * 1024 * 1024
}

const fn default_refresh_interval_secs() -> u64 {
    900
}

impl UpdatesConfig {
    /// Checks every value; the reason names the key (relative to `[updates]`).
    ///
    /// # Errors
    /// `(key, reason)` of the first problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.staging_budget_bytes == 0 {
            return Err(("staging_budget_bytes".into(), "must be positive".into()));
        }
        if !(60..=86_400).contains(&self.refresh_interval_secs) {
            return Err((
                "refresh_interval_secs".into(),
                format!("must be 60–86400, is {}", self.refresh_interval_secs),
            ));
        }
        match self.repository.validate() {
            Ok(_) => Ok(()),
            Err(super::trust::TrustError::Config { key, reason }) => {
                Err((format!("repository.{key}"), reason))
            }
            Err(other) => Err(("repository".into(), other.to_string())),
        }
    }
}
