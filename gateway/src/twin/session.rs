//! The twin's side of one MQTT connection after another, sans-IO: what to subscribe to
//! and request after a CONNACK, when to publish the reported document, and what an
//! incoming publish means. The uplink driver turns [`TwinRequest`]s into rumqttc requests
//! and feeds back what happened; time comes in as `now_ms`.
//!
//! Invariants:
//! * After every [`TwinSession::on_connected`] the first request is the subscription
//!   (the session is clean, so nothing survives a reconnect), and the next reported
//!   document is published regardless of what the previous connection sent.
//! * The full desired state is requested only after the subscription is acknowledged,
//!   so the answer cannot arrive before the broker routes it to us.
//! * Every request the session produces is a QoS 0 publish or a subscription: nothing
//!   here takes a QoS 1 packet id from the records' in-flight window.

use serde_json::Value;

use super::core::{
    desired_changes, device_keys, reported_limit, DesiredOutcome, DesiredSource,
    DeviceCapabilities, IncomingTopic, ReportDecision, ReportScheduler, TwinTopics,
};
use super::{TwinOptions, TwinReport};
use crate::uplink::mqtt::Profile;
use crate::uplink::UplinkStatus;

/// Longest topic of an incoming publish looked at; every twin topic is far shorter.
pub const MAX_INCOMING_TOPIC: usize = 512;

/// Something to hand to the MQTT client.
#[derive(Clone, PartialEq, Eq)]
pub enum TwinRequest {
    /// Subscribe to these filters (QoS 1).
    Subscribe(Vec<String>),
    /// Publish at QoS 0.
    Publish {
        /// Topic.
        topic: String,
        /// Payload (the reported document, or an empty GET).
        payload: Vec<u8>,
        /// Retain flag.
        retain: bool,
    },
}

impl std::fmt::Debug for TwinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TwinRequest::Subscribe(filters) => f.debug_tuple("Subscribe").field(filters).finish(),
            TwinRequest::Publish {
                topic,
                payload,
                retain,
            } => f
                .debug_struct("Publish")
                .field("topic", topic)
                .field("payload_bytes", &payload.len())
                .field("retain", retain)
                .finish(),
        }
    }
}

/// What [`TwinSession::poll_report`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportStep {
    /// Hand this publish to the client.
    Publish(TwinRequest),
    /// A changed document waits for the debounce interval; poll again at this time (ms).
    WaitUntil(u64),
    /// Nothing to do until the report changes.
    Idle,
}

/// See the module documentation.
#[derive(Debug)]
pub struct TwinSession {
    topics: TwinTopics,
    scheduler: ReportScheduler,
    /// Largest reported payload: the profile's twin limit, or the uplink's payload limit
    /// if that is lower.
    reported_limit: usize,
    next_rid: u32,
    awaiting_suback: bool,
    /// IoT Hub request id of the outstanding GET.
    pending_get: Option<u32>,
    /// IoT Hub request id of the last reported patch.
    last_report_rid: Option<u32>,
    /// The report changed (or a session started) since the last decision.
    dirty: bool,
    desired_enabled: bool,
}

impl TwinSession {
    /// A twin for `gateway_id` under `profile`, publishing reported documents of at most
    /// `max_payload_bytes` (and the profile's own twin limit).
    #[must_use]
    pub fn new(
        profile: Profile,
        gateway_id: &str,
        max_payload_bytes: usize,
        options: TwinOptions,
    ) -> Self {
        TwinSession {
            topics: TwinTopics::new(profile, gateway_id),
            reported_limit: reported_limit(profile).min(max_payload_bytes),
            scheduler: ReportScheduler::new(
                u64::try_from(options.min_report_interval.as_millis()).unwrap_or(u64::MAX),
            ),
            next_rid: 0,
            awaiting_suback: false,
            pending_get: None,
            last_report_rid: None,
            dirty: true,
            desired_enabled: true,
        }
    }

    /// The topics in use.
    #[must_use]
    pub fn topics(&self) -> &TwinTopics {
        &self.topics
    }

    /// Whether desired state is still subscribed to (see [`TwinSession::disable_desired`]).
    #[must_use]
    pub fn desired_enabled(&self) -> bool {
        self.desired_enabled
    }

    /// Stops subscribing to desired state from the next connection on: a desired
    /// message too large for the client ended a session, and a retained one would end
    /// every session, starving the records. Reported state is still published.
    pub fn disable_desired(&mut self) {
        self.desired_enabled = false;
    }

    fn rid(&mut self) -> u32 {
        self.next_rid = self.next_rid.wrapping_add(1).max(1);
        self.next_rid
    }

    /// A connection was established: the subscription to send first, if desired state
    /// is enabled.
    pub fn on_connected(&mut self) -> Option<TwinRequest> {
        self.scheduler.on_connected();
        self.pending_get = None;
        self.last_report_rid = None;
        self.dirty = true;
        self.awaiting_suback = self.desired_enabled;
        self.desired_enabled
            .then(|| TwinRequest::Subscribe(self.topics.subscriptions()))
    }

    /// The broker answered the subscription; `granted` is false if it refused any
    /// filter. Returns the request for the full desired state, if the profile has one.
    pub fn on_suback(&mut self, granted: bool) -> Option<TwinRequest> {
        if !std::mem::take(&mut self.awaiting_suback) {
            return None;
        }
        if !granted {
            tracing::warn!(
                profile = self.topics.profile().name(),
                "the broker refused the twin subscription; desired settings will not be received (check the device policy)"
            );
        }
        let rid = self.rid();
        let (topic, payload) = self.topics.get_request(rid)?;
        self.pending_get = Some(rid);
        Some(TwinRequest::Publish {
            topic,
            payload,
            retain: false,
        })
    }

    /// The report changed: the next [`TwinSession::poll_report`] considers it.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Decides whether to publish the reported document now. Cheap when nothing
    /// changed since the last call (the document is built only when marked dirty).
    pub fn poll_report(
        &mut self,
        now_ms: u64,
        report: Option<&TwinReport>,
        uplink: &UplinkStatus,
    ) -> ReportStep {
        if !self.dirty {
            return ReportStep::Idle;
        }
        let Some(report) = report else {
            self.dirty = false;
            return ReportStep::Idle;
        };
        let profile = self.topics.profile();
        let document = super::core::reported_document(profile, report, uplink);
        match self
            .scheduler
            .poll(now_ms, profile, &document, self.reported_limit)
        {
            ReportDecision::Unchanged => {
                self.dirty = false;
                ReportStep::Idle
            }
            ReportDecision::WaitUntil(at) => ReportStep::WaitUntil(at),
            ReportDecision::Publish(payload) => {
                self.dirty = false;
                self.scheduler.sent(now_ms, document);
                let rid = self.rid();
                if profile == Profile::AzureIotHub {
                    self.last_report_rid = Some(rid);
                }
                ReportStep::Publish(TwinRequest::Publish {
                    topic: self.topics.reported(rid),
                    payload,
                    retain: self.topics.reported_retained(),
                })
            }
        }
    }

    /// An incoming publish. Returns the outcome if it carried desired state; answers
    /// and refusals from the cloud are logged (status codes only, never payloads).
    pub fn on_incoming(
        &mut self,
        topic: &str,
        payload: &[u8],
        devices: impl FnOnce() -> Vec<DeviceCapabilities>,
    ) -> Option<DesiredOutcome> {
        if topic.len() > MAX_INCOMING_TOPIC {
            tracing::warn!(
                topic_bytes = topic.len(),
                "publish with an oversized topic ignored"
            );
            return None;
        }
        let profile = self.topics.profile();
        match self.topics.classify(topic) {
            IncomingTopic::Desired(source) => {
                if source == DesiredSource::AwsShadow {
                    self.remember_reported(payload, &["state", "reported"]);
                }
                Some(desired_changes(profile, source, payload, &devices()))
            }
            IncomingTopic::AzureResponse { status, rid } => {
                let is_get = rid.is_some() && rid == self.pending_get;
                if is_get {
                    self.pending_get = None;
                    if status == 200 {
                        self.remember_reported(payload, &["reported"]);
                        return Some(desired_changes(
                            profile,
                            DesiredSource::AzureFullTwin,
                            payload,
                            &devices(),
                        ));
                    }
                    tracing::warn!(
                        status,
                        "IoT Hub refused the twin GET; desired settings arrive with the next patch"
                    );
                } else if rid.is_some() && rid == self.last_report_rid {
                    if (200..300).contains(&status) {
                        tracing::debug!(status, "IoT Hub accepted the reported properties");
                    } else {
                        tracing::warn!(
                            status,
                            "IoT Hub refused the reported properties; they will be sent again"
                        );
                        self.scheduler.on_rejected();
                        self.dirty = true;
                    }
                } else {
                    tracing::debug!(status, "IoT Hub twin response to an older request ignored");
                }
                None
            }
            IncomingTopic::AwsGetRejected => {
                let code = aws_error_code(payload);
                if code == Some(404) {
                    // A new thing has no shadow yet: nothing is desired.
                    return Some(desired_changes(
                        profile,
                        DesiredSource::AwsShadow,
                        b"{}",
                        &devices(),
                    ));
                }
                tracing::warn!(
                    code,
                    "AWS IoT refused the shadow GET; desired settings arrive with the next delta"
                );
                None
            }
            IncomingTopic::AwsUpdateRejected => {
                let code = aws_error_code(payload);
                tracing::warn!(
                    code,
                    "AWS IoT refused the reported shadow update; it will be sent again"
                );
                self.scheduler.on_rejected();
                self.dirty = true;
                None
            }
            IncomingTopic::Unrelated => {
                tracing::debug!(
                    topic_bytes = topic.len(),
                    "publish on an unexpected topic ignored"
                );
                None
            }
        }
    }

    /// Reported device keys the cloud holds (from a full twin or shadow), so devices no
    /// longer declared can be removed from it.
    fn remember_reported(&mut self, payload: &[u8], path: &[&str]) {
        if payload.len() > super::core::MAX_DESIRED_PAYLOAD {
            return;
        }
        let Ok(root) = serde_json::from_slice::<Value>(payload) else {
            return;
        };
        let reported = path.iter().try_fold(&root, |value, key| value.get(*key));
        if let Some(reported) = reported {
            let keys = device_keys(reported);
            if !keys.is_empty() {
                self.scheduler.remember_published_devices(keys);
                self.dirty = true;
            }
        }
    }
}

/// The `code` of an AWS IoT error document (`{"code":404,"message":"..."}`).
fn aws_error_code(payload: &[u8]) -> Option<u64> {
    if payload.len() > super::core::MAX_DESIRED_PAYLOAD {
        return None;
    }
    serde_json::from_slice::<Value>(payload)
        .ok()?
        .get("code")?
        .as_u64()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;
    use crate::twin::core::{DesiredSetting, RefusalReason};
    use crate::twin::{DeviceReport, SpoolReport};
    use std::time::Duration;
    use wardgate_proto::DeviceState;

    fn options() -> TwinOptions {
        TwinOptions {
            min_report_interval: Duration::from_secs(5),
        }
    }

    fn devices() -> Vec<DeviceCapabilities> {
        vec![DeviceCapabilities::from_adapters("pump-1", ["modbus"])]
    }

    fn report(records: u64, ids: &[&str]) -> TwinReport {
        TwinReport {
            version: "1".into(),
            spool: SpoolReport {
                records,
                ..SpoolReport::default()
            },
            devices: ids
                .iter()
                .map(|id| DeviceReport {
                    id: (*id).into(),
                    kind: "pump".into(),
                    group: "icu".into(),
                    adapters: "modbus".into(),
                    state: DeviceState::Online,
                    state_since_ms: 0,
                    poll_interval_ms: Some(1000),
                    log_shipping: None,
                    update: None,
                })
                .collect(),
            updates: Vec::new(),
        }
    }

    fn publish_topic(step: ReportStep) -> (String, Vec<u8>, bool) {
        match step {
            ReportStep::Publish(TwinRequest::Publish {
                topic,
                payload,
                retain,
            }) => (topic, payload, retain),
            other => panic!("expected a publish, got {other:?}"),
        }
    }

    #[test]
    fn generic_connect_subscribes_publishes_retained_and_debounces() {
        let mut twin = TwinSession::new(Profile::Generic, "gw", 256 * 1024, options());
        assert_eq!(
            twin.on_connected(),
            Some(TwinRequest::Subscribe(vec![
                "wardgate/gw/twin/desired".into()
            ]))
        );
        // Nothing to report before the daemon has a report.
        assert_eq!(
            twin.poll_report(0, None, &UplinkStatus::default()),
            ReportStep::Idle
        );
        twin.mark_dirty();
        let r1 = report(1, &["pump-1"]);
        let (topic, payload, retain) =
            publish_topic(twin.poll_report(10, Some(&r1), &UplinkStatus::default()));
        assert_eq!(topic, "wardgate/gw/twin/reported");
        assert!(retain);
        let doc: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(doc["devices"]["pump-1"]["poll_interval_ms"], 1000);
        // The generic profile has no GET: the retained desired document comes by itself.
        assert_eq!(twin.on_suback(true), None);

        // Not dirty: not even built.
        assert_eq!(
            twin.poll_report(20, Some(&r1), &UplinkStatus::default()),
            ReportStep::Idle
        );
        twin.mark_dirty();
        let r2 = report(2, &["pump-1"]);
        assert_eq!(
            twin.poll_report(1000, Some(&r2), &UplinkStatus::default()),
            ReportStep::WaitUntil(5010)
        );
        publish_topic(twin.poll_report(5010, Some(&r2), &UplinkStatus::default()));

        // A reconnect publishes the same document again at once.
        assert!(twin.on_connected().is_some());
        publish_topic(twin.poll_report(5020, Some(&r2), &UplinkStatus::default()));
    }

    #[test]
    fn desired_is_parsed_and_unrelated_topics_ignored() {
        let mut twin = TwinSession::new(Profile::Generic, "gw", 256 * 1024, options());
        twin.on_connected();
        let outcome = twin
            .on_incoming(
                "wardgate/gw/twin/desired",
                br#"{"devices":{"pump-1":{"poll_interval_ms":2000,"reboot":true}}}"#,
                devices,
            )
            .unwrap();
        assert_eq!(
            outcome.accepted,
            vec![DesiredSetting::PollInterval {
                device: "pump-1".into(),
                interval_ms: Some(2000)
            }]
        );
        assert_eq!(outcome.refused[0].reason, RefusalReason::UnknownKey);
        assert_eq!(
            twin.on_incoming("wardgate/other/twin/desired", b"{}", || panic!("not asked")),
            None
        );
    }

    #[test]
    fn azure_get_after_suback_and_responses_by_request_id() {
        let mut twin = TwinSession::new(Profile::AzureIotHub, "gw", 256 * 1024, options());
        assert!(matches!(twin.on_connected(), Some(TwinRequest::Subscribe(f)) if f.len() == 2));
        let Some(TwinRequest::Publish { topic, payload, .. }) = twin.on_suback(true) else {
            panic!("expected the GET");
        };
        assert_eq!(topic, "$iothub/twin/GET/?$rid=1");
        assert!(payload.is_empty());
        // A second SUBACK does not send another GET.
        assert_eq!(twin.on_suback(true), None);

        let (topic, _, retain) = publish_topic(twin.poll_report(
            0,
            Some(&report(0, &["pump-1"])),
            &UplinkStatus::default(),
        ));
        assert_eq!(topic, "$iothub/twin/PATCH/properties/reported/?$rid=2");
        assert!(!retain);

        // An answer to an unknown request is ignored.
        assert_eq!(
            twin.on_incoming("$iothub/twin/res/200/?$rid=77", b"{}", || panic!(
                "not asked"
            )),
            None
        );
        // The full twin: desired applied, stale reported devices remembered.
        let outcome = twin
            .on_incoming(
                "$iothub/twin/res/200/?$rid=1",
                br#"{"desired":{"devices":{"pump-1":{"poll_interval_ms":500}},"$version":3},
                     "reported":{"devices":{"old":{"state":"online"}},"$version":2}}"#,
                devices,
            )
            .unwrap();
        assert_eq!(outcome.source, DesiredSource::AzureFullTwin);
        assert_eq!(outcome.version, Some(3));
        assert_eq!(outcome.accepted.len(), 1);
        // Answered: a repeat is ignored.
        assert_eq!(
            twin.on_incoming("$iothub/twin/res/200/?$rid=1", b"{}", || panic!(
                "not asked"
            )),
            None
        );

        // Refused reported patch: sent again after the interval, with the stale device
        // removed.
        assert_eq!(
            twin.on_incoming("$iothub/twin/res/400/?$rid=2", b"", || panic!("not asked")),
            None
        );
        assert_eq!(
            twin.poll_report(1, Some(&report(0, &["pump-1"])), &UplinkStatus::default()),
            ReportStep::WaitUntil(5000)
        );
        let (_, payload, _) = publish_topic(twin.poll_report(
            5000,
            Some(&report(0, &["pump-1"])),
            &UplinkStatus::default(),
        ));
        let doc: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(doc["devices"]["old"], Value::Null);

        let outcome = twin
            .on_incoming(
                "$iothub/twin/PATCH/properties/desired/?$version=4",
                br#"{"devices":{"pump-1":{"poll_interval_ms":null}},"$version":4}"#,
                devices,
            )
            .unwrap();
        assert!(!outcome.complete);
        assert_eq!(outcome.version, Some(4));
    }

    #[test]
    fn aws_get_404_means_nothing_desired_and_rejections_resend() {
        let mut twin = TwinSession::new(Profile::AwsIotCore, "gw", 128 * 1024, options());
        assert!(matches!(twin.on_connected(), Some(TwinRequest::Subscribe(f)) if f.len() == 4));
        let Some(TwinRequest::Publish { topic, .. }) = twin.on_suback(true) else {
            panic!("expected the GET");
        };
        assert_eq!(topic, "$aws/things/gw/shadow/get");
        let outcome = twin
            .on_incoming(
                "$aws/things/gw/shadow/get/rejected",
                br#"{"code":404,"message":"No shadow exists with name: 'gw'"}"#,
                devices,
            )
            .unwrap();
        assert!(outcome.complete && outcome.accepted.is_empty() && outcome.refused.is_empty());
        assert_eq!(
            twin.on_incoming(
                "$aws/things/gw/shadow/get/rejected",
                br#"{"code":500}"#,
                || { panic!("not asked") }
            ),
            None
        );

        let r = report(0, &["pump-1"]);
        let (topic, payload, retain) =
            publish_topic(twin.poll_report(0, Some(&r), &UplinkStatus::default()));
        assert_eq!(topic, "$aws/things/gw/shadow/update");
        assert!(!retain);
        let doc: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(doc["state"]["reported"]["schema"], 1);
        twin.on_incoming(
            "$aws/things/gw/shadow/update/rejected",
            br#"{"code":400}"#,
            || panic!("not asked"),
        );
        assert_eq!(
            twin.poll_report(5000, Some(&r), &UplinkStatus::default()),
            ReportStep::Publish(TwinRequest::Publish {
                topic: "$aws/things/gw/shadow/update".into(),
                payload,
                retain: false
            })
        );
    }

    #[test]
    fn disabled_desired_means_no_subscription_and_no_get() {
        let mut twin = TwinSession::new(Profile::AzureIotHub, "gw", 256 * 1024, options());
        twin.disable_desired();
        assert_eq!(twin.on_connected(), None);
        assert_eq!(twin.on_suback(true), None);
        assert!(matches!(
            twin.poll_report(0, Some(&report(0, &[])), &UplinkStatus::default()),
            ReportStep::Publish(_)
        ));
    }
}
