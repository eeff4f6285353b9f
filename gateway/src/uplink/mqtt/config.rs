//! MQTT uplink configuration, profile rules and their validation. Pure: no I/O (the
//! credential files are checked in [`super::tls`]).
//!
//! Invariant: rumqttc's option setters panic on some values (keep-alive under a second,
//! zero in-flight); everything handed to rumqttc comes from a [`SessionPlan`], which only
//! [`MqttUplinkConfig::plan`] builds, after checking every value.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wardgate_proto::Priority;

use super::batch::MAX_RECORDS_PER_PUBLISH;
use crate::uplink::UplinkError;

/// Default TLS port of MQTT.
pub const DEFAULT_PORT: u16 = 8883;
/// Azure IoT Hub's device-to-cloud message size limit.
pub const AZURE_MAX_PAYLOAD: usize = 256 * 1024;
/// AWS IoT Core's message payload limit.
pub const AWS_MAX_PAYLOAD: usize = 128 * 1024;
/// The generic profile's limit (also what the shipped configuration documents).
pub const GENERIC_MAX_PAYLOAD: usize = 256 * 1024;
/// Smallest payload limit accepted: below it the envelope leaves too little for records.
pub const MIN_PAYLOAD: usize = 1024;
/// Azure IoT Hub closes idle connections after 29.45 min; its documentation recommends
/// a keep-alive of at most 1177 s.
pub const AZURE_MAX_KEEP_ALIVE: Duration = Duration::from_secs(1177);
/// AWS IoT Core accepts keep-alive values from 30 to 1200 s.
pub const AWS_KEEP_ALIVE: (Duration, Duration) =
    (Duration::from_secs(30), Duration::from_secs(1200));
/// Azure IoT Hub API version in the MQTT username.
pub const AZURE_API_VERSION: &str = "2021-04-12";
/// AWS IoT Core's ALPN protocol for X.509 client authentication on port 443.
pub const AWS_ALPN_PORT_443: &[u8] = b"x-amzn-mqtt-ca";

/// Topic and identity scheme of the cloud side. See the module documentation of
/// [`crate::uplink::mqtt`] for the exact topics, client ids and usernames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Any MQTT 3.1.1 broker with mutual TLS (mosquitto, EMQX, HiveMQ, ...).
    Generic,
    /// Azure IoT Hub, X.509 device authentication.
    AzureIotHub,
    /// AWS IoT Core, X.509 thing certificate.
    AwsIotCore,
}

impl Profile {
    /// The largest payload the cloud side accepts.
    #[must_use]
    pub const fn max_payload_bytes(self) -> usize {
        match self {
            Profile::Generic => GENERIC_MAX_PAYLOAD,
            Profile::AzureIotHub => AZURE_MAX_PAYLOAD,
            Profile::AwsIotCore => AWS_MAX_PAYLOAD,
        }
    }

    /// The name used in configuration files.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Profile::Generic => "generic",
            Profile::AzureIotHub => "azure-iot-hub",
            Profile::AwsIotCore => "aws-iot-core",
        }
    }

    /// The topic records of `priority` are published on.
    #[must_use]
    pub fn topic(self, gateway_id: &str, priority: Priority) -> String {
        match self {
            Profile::Generic | Profile::AwsIotCore => format!("wardgate/{gateway_id}/records/{}", priority.name()),
            // The property bag rides in the topic; IoT Hub turns it into message
            // properties that routing queries can use (`priority = 'alarm'`).
            Profile::AzureIotHub => format!(
                "devices/{gateway_id}/messages/events/$.ct=application%2Fjson&$.ce=utf-8&priority={}",
                priority.name()
            ),
        }
    }

    /// The MQTT username, if the profile sends one.
    #[must_use]
    pub fn username(self, broker_host: &str, gateway_id: &str) -> Option<String> {
        match self {
            // With X.509 auth the broker derives the identity from the certificate.
            Profile::Generic | Profile::AwsIotCore => None,
            Profile::AzureIotHub => Some(format!(
                "{broker_host}/{gateway_id}/?api-version={AZURE_API_VERSION}"
            )),
        }
    }
}

/// Configuration of the MQTT uplink. Build a [`SessionPlan`] with
/// [`MqttUplinkConfig::plan`] to validate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUplinkConfig {
    /// The broker: `mqtts://host[:port]` (port defaults to 8883). Plain `mqtt://` is not
    /// accepted: nothing leaves the gateway unencrypted.
    pub url: String,
    /// PEM file with the CA certificate(s) that signed the broker's certificate; the only
    /// trust anchors (the system store is not used).
    pub ca_file: PathBuf,
    /// PEM file with the gateway's client certificate, followed by any intermediates.
    pub cert_file: PathBuf,
    /// PEM file with the client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// The gateway id: MQTT client id, and device id / thing name in the cloud profiles.
    pub gateway_id: String,
    /// Topic and identity scheme.
    pub profile: Profile,
    /// Publishes awaiting their PUBACK at once (1..=65535).
    pub inflight_window: u16,
    /// Largest publish payload; records are batched up to it. At most the profile's limit.
    pub max_payload_bytes: usize,
    /// Most records per publish (1..=4096). 1 turns batching off, for cloud pipelines
    /// that handle one record per message; it costs throughput.
    pub max_records_per_publish: usize,
    /// MQTT keep-alive (whole seconds; at least 1 s, profile limits apply).
    pub keep_alive: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// How long the oldest publish may wait for its PUBACK before the connection is
    /// considered dead and re-established (at least 1 s).
    pub ack_timeout: Duration,
}

impl MqttUplinkConfig {
    /// Default in-flight window.
    pub const DEFAULT_INFLIGHT_WINDOW: u16 = 64;
    /// Default keep-alive.
    pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(60);
    /// Default first reconnect delay.
    pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(500);
    /// Default largest reconnect delay.
    pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(120);
    /// Default acknowledgement timeout.
    pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(60);

    /// A configuration with every optional value at its default.
    #[must_use]
    pub fn new(
        url: impl Into<String>,
        ca_file: impl Into<PathBuf>,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
        gateway_id: impl Into<String>,
        profile: Profile,
    ) -> Self {
        MqttUplinkConfig {
            url: url.into(),
            ca_file: ca_file.into(),
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            gateway_id: gateway_id.into(),
            profile,
            inflight_window: Self::DEFAULT_INFLIGHT_WINDOW,
            max_payload_bytes: profile.max_payload_bytes(),
            max_records_per_publish: MAX_RECORDS_PER_PUBLISH,
            keep_alive: Self::DEFAULT_KEEP_ALIVE,
            backoff_min: Self::DEFAULT_BACKOFF_MIN,
            backoff_max: Self::DEFAULT_BACKOFF_MAX,
            ack_timeout: Self::DEFAULT_ACK_TIMEOUT,
        }
    }

    /// Checks every value against MQTT, rumqttc and the profile's rules.
    ///
    /// # Errors
    /// [`UplinkError::Config`] naming the offending key.
    pub fn plan(&self) -> Result<SessionPlan, UplinkError> {
        let broker = BrokerAddress::parse(&self.url)?;
        validate_gateway_id(&self.gateway_id, self.profile)?;
        if self.inflight_window == 0 {
            return Err(config_error("inflight_window", "must be at least 1"));
        }
        let limit = self.profile.max_payload_bytes();
        if self.max_payload_bytes < MIN_PAYLOAD || self.max_payload_bytes > limit {
            return Err(config_error(
                "max_payload_bytes",
                format!(
                    "{} is outside {MIN_PAYLOAD}..={limit} (the {} profile's limit)",
                    self.max_payload_bytes,
                    self.profile.name()
                ),
            ));
        }
        if self.max_records_per_publish == 0
            || self.max_records_per_publish > MAX_RECORDS_PER_PUBLISH
        {
            return Err(config_error(
                "max_records_per_publish",
                format!(
                    "{} is outside 1..={MAX_RECORDS_PER_PUBLISH}",
                    self.max_records_per_publish
                ),
            ));
        }
        self.validate_keep_alive()?;
        if self.backoff_min.is_zero() {
            return Err(config_error("backoff_min", "must be above zero"));
        }
        if self.backoff_max < self.backoff_min {
            return Err(config_error("backoff_max", "must not be below backoff_min"));
        }
        if self.ack_timeout < Duration::from_secs(1) {
            return Err(config_error("ack_timeout", "must be at least 1 s"));
        }

        let topics = Priority::ALL.map(|priority| self.profile.topic(&self.gateway_id, priority));
        for topic in &topics {
            validate_topic(topic, self.profile)?;
        }
        let alpn = (self.profile == Profile::AwsIotCore && broker.port == 443)
            .then(|| AWS_ALPN_PORT_443.to_vec());
        Ok(SessionPlan {
            username: self.profile.username(&broker.host, &self.gateway_id),
            broker,
            client_id: self.gateway_id.clone(),
            topics,
            max_payload_bytes: self.max_payload_bytes,
            max_records_per_publish: self.max_records_per_publish,
            keep_alive: Duration::from_secs(self.keep_alive.as_secs()),
            inflight_window: self.inflight_window,
            alpn,
        })
    }

    fn validate_keep_alive(&self) -> Result<(), UplinkError> {
        let secs = self.keep_alive.as_secs();
        // rumqttc asserts keep-alive >= 1 s and sends whole seconds in a u16.
        if secs < 1 || secs > u64::from(u16::MAX) {
            return Err(config_error(
                "keep_alive",
                format!("{secs} s is outside 1..=65535 s"),
            ));
        }
        match self.profile {
            Profile::AzureIotHub if self.keep_alive > AZURE_MAX_KEEP_ALIVE => Err(config_error(
                "keep_alive",
                format!(
                    "{secs} s exceeds Azure IoT Hub's {} s",
                    AZURE_MAX_KEEP_ALIVE.as_secs()
                ),
            )),
            Profile::AwsIotCore
                if self.keep_alive < AWS_KEEP_ALIVE.0 || self.keep_alive > AWS_KEEP_ALIVE.1 =>
            {
                Err(config_error(
                    "keep_alive",
                    format!(
                        "{secs} s is outside AWS IoT Core's {}..={} s",
                        AWS_KEEP_ALIVE.0.as_secs(),
                        AWS_KEEP_ALIVE.1.as_secs()
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Everything a connection needs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPlan {
    /// Broker host and port.
    pub broker: BrokerAddress,
    /// MQTT client id.
    pub client_id: String,
    /// MQTT username, if the profile uses one (never a password: X.509 only).
    pub username: Option<String>,
    /// Topic per priority, indexed by [`Priority::as_u8`].
    pub topics: [String; 4],
    /// Largest payload.
    pub max_payload_bytes: usize,
    /// Most records per publish.
    pub max_records_per_publish: usize,
    /// Keep-alive, whole seconds.
    pub keep_alive: Duration,
    /// In-flight window.
    pub inflight_window: u16,
    /// ALPN protocol to offer, if the profile needs one.
    pub alpn: Option<Vec<u8>>,
}

impl SessionPlan {
    /// The topic for `priority`.
    #[must_use]
    pub fn topic(&self, priority: Priority) -> &str {
        &self.topics[usize::from(priority.as_u8())]
    }
}

/// Broker host (DNS name or IP address, as it must appear in the broker's certificate)
/// and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl std::fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl BrokerAddress {
    /// Parses `mqtts://host[:port]` (also `ssl://`), `host` being a DNS name, an IPv4
    /// address or a bracketed IPv6 address.
    ///
    /// # Errors
    /// [`UplinkError::Config`] for `url`.
    pub fn parse(url: &str) -> Result<Self, UplinkError> {
        let rest = url
            .strip_prefix("mqtts://")
            .or_else(|| url.strip_prefix("ssl://"))
            .ok_or_else(|| {
                config_error(
                    "url",
                    format!("`{url}` must start with mqtts:// (TLS is required)"),
                )
            })?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(config_error(
                "url",
                format!("`{url}` must be mqtts://host[:port] without path, query or user"),
            ));
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(|| {
                config_error("url", format!("`{url}` has an unclosed IPv6 bracket"))
            })?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| config_error("url", format!("`{url}`: junk after ]")))?,
                ),
            };
            (host, port)
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                config_error("url", format!("`{url}`: port `{p}` is not 1..=65535"))
            })?,
        };
        if host.is_empty() {
            return Err(config_error("url", format!("`{url}` has no host")));
        }
        // The host must be usable as a TLS server name (DNS name or IP address).
        if rustls_pki_types::ServerName::try_from(host).is_err() {
            return Err(config_error(
                "url",
                format!("`{host}` is not a valid host name or IP address"),
            ));
        }
        Ok(BrokerAddress {
            host: host.to_owned(),
            port,
        })
    }
}

/// Gateway ids: 1–128 of `A-Z a-z 0-9 - _ . :`; AWS thing names additionally exclude `.`.
fn validate_gateway_id(id: &str, profile: Profile) -> Result<(), UplinkError> {
    if id.is_empty() || id.len() > 128 {
        return Err(config_error(
            "gateway_id",
            format!("must be 1-128 characters, got {}", id.len()),
        ));
    }
    let allowed = |c: char| match profile {
        Profile::AwsIotCore => c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':'),
        Profile::Generic | Profile::AzureIotHub => {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
        }
    };
    if let Some(bad) = id.chars().find(|c| !allowed(*c)) {
        let set = match profile {
            Profile::AwsIotCore => "A-Z a-z 0-9 - _ : (AWS thing name)",
            Profile::Generic | Profile::AzureIotHub => "A-Z a-z 0-9 - _ . :",
        };
        return Err(config_error(
            "gateway_id",
            format!("character {bad:?} is not allowed; use {set}"),
        ));
    }
    Ok(())
}

fn validate_topic(topic: &str, profile: Profile) -> Result<(), UplinkError> {
    if topic.contains(['+', '#', '\0']) {
        return Err(config_error(
            "gateway_id",
            format!("topic `{topic}` would contain a wildcard"),
        ));
    }
    if profile == Profile::AwsIotCore {
        if topic.len() > 256 {
            return Err(config_error(
                "gateway_id",
                "AWS IoT Core topics are limited to 256 bytes",
            ));
        }
        if topic.matches('/').count() > 7 {
            return Err(config_error(
                "gateway_id",
                "AWS IoT Core topics may have at most 7 slashes",
            ));
        }
        if topic.starts_with('$') {
            return Err(config_error(
                "gateway_id",
                "AWS IoT Core reserves topics starting with $",
            ));
        }
    }
    Ok(())
}

fn config_error(key: &'static str, reason: impl Into<String>) -> UplinkError {
    UplinkError::Config {
        key,
        reason: reason.into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    fn config(profile: Profile) -> MqttUplinkConfig {
        MqttUplinkConfig::new(
            "mqtts://hub.example.net",
            "ca.pem",
            "gw.pem",
            "gw.key",
            "wardgate-icu-1",
            profile,
        )
    }

    fn key_of(err: UplinkError) -> &'static str {
        match err {
            UplinkError::Config { key, .. } => key,
            other => panic!("expected a config error, got {other}"),
        }
    }

    #[test]
    fn generic_profile_topics_and_identity() {
        let plan = config(Profile::Generic).plan().unwrap();
        assert_eq!(plan.client_id, "wardgate-icu-1");
        assert_eq!(plan.username, None);
        assert_eq!(
            plan.topic(Priority::Alarm),
            "wardgate/wardgate-icu-1/records/alarm"
        );
        assert_eq!(
            plan.topic(Priority::Observation),
            "wardgate/wardgate-icu-1/records/observation"
        );
        assert_eq!(
            plan.broker,
            BrokerAddress {
                host: "hub.example.net".into(),
                port: 8883
            }
        );
        assert_eq!(plan.max_payload_bytes, 256 * 1024);
        assert_eq!(plan.alpn, None);
    }

    #[test]
    fn azure_profile_username_topic_and_limits() {
        let plan = config(Profile::AzureIotHub).plan().unwrap();
        assert_eq!(plan.client_id, "wardgate-icu-1");
        assert_eq!(
            plan.username.as_deref(),
            Some("hub.example.net/wardgate-icu-1/?api-version=2021-04-12")
        );
        assert_eq!(
            plan.topic(Priority::Alarm),
            "devices/wardgate-icu-1/messages/events/$.ct=application%2Fjson&$.ce=utf-8&priority=alarm"
        );
        assert_eq!(plan.max_payload_bytes, 256 * 1024);

        let mut c = config(Profile::AzureIotHub);
        c.keep_alive = Duration::from_secs(1178);
        assert_eq!(key_of(c.plan().unwrap_err()), "keep_alive");
        c.keep_alive = Duration::from_secs(1177);
        c.max_payload_bytes = 256 * 1024 + 1;
        assert_eq!(key_of(c.plan().unwrap_err()), "max_payload_bytes");
    }

    #[test]
    fn aws_profile_thing_name_topic_and_limits() {
        let plan = config(Profile::AwsIotCore).plan().unwrap();
        assert_eq!(
            plan.topic(Priority::Log),
            "wardgate/wardgate-icu-1/records/log"
        );
        assert_eq!(plan.username, None);
        assert_eq!(plan.max_payload_bytes, 128 * 1024);
        for topic in &plan.topics {
            assert!(topic.matches('/').count() <= 7 && topic.len() <= 256);
        }

        let mut c = config(Profile::AwsIotCore);
        c.gateway_id = "icu.1".into();
        assert_eq!(key_of(c.plan().unwrap_err()), "gateway_id");
        c.gateway_id = "a".repeat(129);
        assert_eq!(key_of(c.plan().unwrap_err()), "gateway_id");
        c.gateway_id = "a".repeat(128);
        assert!(c.plan().is_ok());
        c.max_payload_bytes = 256 * 1024;
        assert_eq!(key_of(c.plan().unwrap_err()), "max_payload_bytes");
        c.max_payload_bytes = 128 * 1024;
        c.keep_alive = Duration::from_secs(10);
        assert_eq!(key_of(c.plan().unwrap_err()), "keep_alive");

        let mut c = config(Profile::AwsIotCore);
        c.url = "mqtts://abc-ats.iot.eu-west-1.amazonaws.com:443".into();
        assert_eq!(
            c.plan().unwrap().alpn.as_deref(),
            Some(&b"x-amzn-mqtt-ca"[..])
        );
    }

    #[test]
    fn gateway_ids_that_would_break_topics_are_refused() {
        for bad in ["", "a/b", "a+b", "a#", "a b", "\u{e9}"] {
            let mut c = config(Profile::Generic);
            c.gateway_id = bad.into();
            assert_eq!(key_of(c.plan().unwrap_err()), "gateway_id", "{bad:?}");
        }
    }

    #[test]
    fn values_rumqttc_would_panic_on_are_refused() {
        let mut c = config(Profile::Generic);
        c.keep_alive = Duration::from_millis(500);
        assert_eq!(key_of(c.plan().unwrap_err()), "keep_alive");
        let mut c = config(Profile::Generic);
        c.inflight_window = 0;
        assert_eq!(key_of(c.plan().unwrap_err()), "inflight_window");
        let mut c = config(Profile::Generic);
        c.backoff_min = Duration::ZERO;
        assert_eq!(key_of(c.plan().unwrap_err()), "backoff_min");
        let mut c = config(Profile::Generic);
        c.backoff_max = Duration::from_millis(1);
        assert_eq!(key_of(c.plan().unwrap_err()), "backoff_max");
        let mut c = config(Profile::Generic);
        c.ack_timeout = Duration::from_millis(10);
        assert_eq!(key_of(c.plan().unwrap_err()), "ack_timeout");
        let mut c = config(Profile::Generic);
        c.max_payload_bytes = 100;
        assert_eq!(key_of(c.plan().unwrap_err()), "max_payload_bytes");
        for bad in [0, 4097] {
            let mut c = config(Profile::Generic);
            c.max_records_per_publish = bad;
            assert_eq!(key_of(c.plan().unwrap_err()), "max_records_per_publish");
        }
    }

    #[test]
    fn broker_urls() {
        let ok = |url: &str| BrokerAddress::parse(url).unwrap();
        assert_eq!(
            ok("mqtts://127.0.0.1:18883"),
            BrokerAddress {
                host: "127.0.0.1".into(),
                port: 18883
            }
        );
        assert_eq!(
            ok("mqtts://broker.example.net/"),
            BrokerAddress {
                host: "broker.example.net".into(),
                port: 8883
            }
        );
        assert_eq!(
            ok("ssl://[::1]:8884"),
            BrokerAddress {
                host: "::1".into(),
                port: 8884
            }
        );
        assert_eq!(ok("mqtts://[::1]").to_string(), "[::1]:8883");
        for bad in [
            "mqtt://broker:1883",
            "tcp://broker",
            "mqtts://",
            "mqtts://broker:0",
            "mqtts://broker:99999",
            "mqtts://broker:x",
            "mqtts://user@broker",
            "mqtts://broker/path",
            "mqtts://[::1",
            "mqtts://bad host",
        ] {
            assert!(BrokerAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn profile_names_match_the_configuration_file() {
        for (profile, name) in [
            (Profile::Generic, "generic"),
            (Profile::AzureIotHub, "azure-iot-hub"),
            (Profile::AwsIotCore, "aws-iot-core"),
        ] {
            assert_eq!(profile.name(), name);
            let parsed: Profile = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(parsed, profile);
        }
    }
}
