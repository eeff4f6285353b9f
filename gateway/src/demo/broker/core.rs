//! The stand-in broker's protocol core: MQTT 3.1.1 session and routing rules as pure
//! code. No I/O, no clock, no tokio: the driver in `super` feeds it decoded packets and
//! carries out the [`Effect`]s it returns, in order.
//!
//! Invariants:
//! - A connection's first packet must be CONNECT, and only the first; anything else
//!   closes it (MQTT-3.1.0-1, MQTT-3.1.0-2).
//! - Identity is the verified client certificate's common name, given to [`BrokerCore::open`]
//!   by the driver; the MQTT client id and any username/password are not trusted for
//!   authorisation. [`AccessPolicy`] decides from the identity alone.
//! - A publish that the policy refuses closes the publisher's connection (MQTT 3.1.1 has
//!   no negative PUBACK; AWS IoT Core behaves the same way), and is routed nowhere.
//! - QoS 1 inbound is acknowledged (PUBACK) only after it was routed; QoS 2 inbound is
//!   routed once per packet id until PUBREL. Deliveries are granted at most QoS 1.
//! - Per subscriber, at most `max_inflight` QoS 1 deliveries await PUBACK and at most
//!   `max_queued` more wait behind them; beyond that the subscriber is disconnected as a
//!   slow consumer rather than letting memory grow.
//! - Sessions are not persisted: CONNACK always says `session_present = false`, which is
//!   the truthful answer for a broker that keeps no state across connections.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PubAck, PubComp, PubRec, Publish,
    SubAck, Subscribe, SubscribeReasonCode, UnsubAck, Unsubscribe,
};
use rumqttc::mqttbytes::{matches, valid_filter, valid_topic, Protocol, QoS};

/// A connection, numbered by the driver.
pub type ConnId = u64;

/// Something the driver must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write this packet to that connection.
    Send(ConnId, Packet),
    /// Close that connection (after writing what was sent to it before).
    Close(ConnId, CloseReason),
}

/// Why the broker closes a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT.
    ClientDisconnected,
    /// The client broke the protocol.
    ProtocolViolation(&'static str),
    /// The client asked for a protocol level other than 3.1.1.
    UnsupportedProtocol,
    /// The client published where its identity may not.
    PublishDenied {
        /// The identity (certificate CN).
        identity: String,
        /// The topic it tried.
        topic: String,
    },
    /// Another connection connected with the same client id (MQTT-3.1.4-2).
    TakenOver,
    /// The subscriber did not acknowledge deliveries fast enough.
    SlowConsumer,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::ClientDisconnected => f.write_str("client disconnected"),
            CloseReason::ProtocolViolation(what) => write!(f, "protocol violation: {what}"),
            CloseReason::UnsupportedProtocol => f.write_str("unsupported protocol level"),
            CloseReason::PublishDenied { identity, topic } => {
                write!(f, "publish by {identity:?} to {topic:?} denied")
            }
            CloseReason::TakenOver => f.write_str("client id taken over by a new connection"),
            CloseReason::SlowConsumer => f.write_str("slow consumer"),
        }
    }
}

/// Topic authorisation from the certificate identity, shaped like a production cloud
/// policy: a device identity publishes and subscribes only under `<root>/<identity>/`;
/// the observer identity may subscribe anywhere under `<root>/` and publish nowhere.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    root: String,
    observer: String,
}

impl AccessPolicy {
    /// A policy for topics under `root` (no trailing slash) with one observer identity.
    #[must_use]
    pub fn new(root: &str, observer: &str) -> Self {
        AccessPolicy {
            root: root.to_owned(),
            observer: observer.to_owned(),
        }
    }

    /// Identities that could smuggle topic syntax into the prefix get nothing.
    fn usable(identity: &str) -> bool {
        !identity.is_empty() && !identity.contains(['/', '+', '#', '\0'])
    }

    fn own_prefix(&self, identity: &str) -> String {
        format!("{}/{}/", self.root, identity)
    }

    /// May `identity` publish to `topic`?
    #[must_use]
    pub fn may_publish(&self, identity: &str, topic: &str) -> bool {
        Self::usable(identity)
            && identity != self.observer
            && topic.starts_with(&self.own_prefix(identity))
    }

    /// May `identity` subscribe to `filter`?
    #[must_use]
    pub fn may_subscribe(&self, identity: &str, filter: &str) -> bool {
        if !Self::usable(identity) {
            return false;
        }
        if identity == self.observer {
            return filter
                .strip_prefix(self.root.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        }
        filter.starts_with(&self.own_prefix(identity))
    }
}

/// Bounds that keep a misbehaving client from growing the broker's memory.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// QoS 1 deliveries per subscriber awaiting PUBACK.
    pub max_inflight: usize,
    /// Further deliveries queued behind them.
    pub max_queued: usize,
    /// Retained messages kept (new topics beyond this are not retained).
    pub max_retained: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_inflight: 100,
            max_queued: 10_000,
            max_retained: 1_000,
        }
    }
}

/// Counters, for the demo's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// CONNECTs accepted.
    pub connects: u64,
    /// PUBLISH packets accepted from clients (after authorisation).
    pub publishes_in: u64,
    /// Payload bytes of those.
    pub payload_bytes_in: u64,
    /// Deliveries to subscribers.
    pub deliveries: u64,
    /// Publishes refused by the policy.
    pub publishes_denied: u64,
    /// Subscription filters refused by the policy or as invalid.
    pub subscriptions_denied: u64,
}

struct Session {
    identity: String,
    connected: Option<Connected>,
}

struct Connected {
    client_id: String,
    keep_alive_secs: u16,
    will: Option<LastWill>,
    subscriptions: BTreeMap<String, QoS>,
    inflight: HashMap<u16, Publish>,
    queued: VecDeque<Publish>,
    last_pkid: u16,
    qos2_received: HashSet<u16>,
}

impl Connected {
    /// The next packet id not in flight. Terminates because `inflight` is bounded far
    /// below 65,535 entries.
    fn allocate_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }
}

/// The broker's state: sessions, subscriptions, retained messages.
pub struct BrokerCore {
    policy: AccessPolicy,
    limits: Limits,
    sessions: HashMap<ConnId, Session>,
    by_client_id: HashMap<String, ConnId>,
    retained: BTreeMap<String, Publish>,
    generated_ids: u64,
    stats: CoreStats,
}

impl BrokerCore {
    /// An empty broker.
    #[must_use]
    pub fn new(policy: AccessPolicy, limits: Limits) -> Self {
        BrokerCore {
            policy,
            limits,
            sessions: HashMap::new(),
            by_client_id: HashMap::new(),
            retained: BTreeMap::new(),
            generated_ids: 0,
            stats: CoreStats::default(),
        }
    }

    /// A TLS connection with a verified client certificate whose CN is `identity` was
    /// accepted; it must CONNECT next.
    pub fn open(&mut self, conn: ConnId, identity: String) {
        self.sessions.insert(
            conn,
            Session {
                identity,
                connected: None,
            },
        );
    }

    /// The connection is gone (closed by either side, for any reason). Publishes its will
    /// unless it sent DISCONNECT.
    pub fn closed(&mut self, conn: ConnId) -> Vec<Effect> {
        let Some(session) = self.sessions.remove(&conn) else {
            return Vec::new();
        };
        let Some(connected) = session.connected else {
            return Vec::new();
        };
        if self.by_client_id.get(&connected.client_id) == Some(&conn) {
            self.by_client_id.remove(&connected.client_id);
        }
        let mut effects = Vec::new();
        if let Some(will) = connected.will {
            if self.policy.may_publish(&session.identity, &will.topic) {
                let mut publish = Publish::from_bytes(will.topic, will.qos, will.message);
                publish.retain = will.retain;
                self.accept_publish(conn, publish, &mut effects);
            }
        }
        effects
    }

    /// The keep-alive the client asked for, once connected (0 = none).
    #[must_use]
    pub fn keep_alive_secs(&self, conn: ConnId) -> Option<u16> {
        self.sessions
            .get(&conn)?
            .connected
            .as_ref()
            .map(|c| c.keep_alive_secs)
    }

    /// Counters so far.
    #[must_use]
    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// Handles one packet from `conn`.
    pub fn handle(&mut self, conn: ConnId, packet: Packet) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(session) = self.sessions.get(&conn) else {
            // Not opened, or already closed: the driver drops such packets.
            return effects;
        };
        if session.connected.is_none() {
            match packet {
                Packet::Connect(connect) => self.connect(conn, connect, &mut effects),
                _ => effects.push(Effect::Close(
                    conn,
                    CloseReason::ProtocolViolation("first packet must be CONNECT"),
                )),
            }
            return effects;
        }
        match packet {
            Packet::Connect(_) => effects.push(Effect::Close(
                conn,
                CloseReason::ProtocolViolation("second CONNECT"),
            )),
            Packet::Publish(publish) => self.publish(conn, publish, &mut effects),
            Packet::PubAck(ack) => self.delivery_acked(conn, ack.pkid, &mut effects),
            Packet::PubRel(rel) => {
                if let Some(c) = self.connected_mut(conn) {
                    c.qos2_received.remove(&rel.pkid);
                }
                effects.push(Effect::Send(conn, Packet::PubComp(PubComp::new(rel.pkid))));
            }
            // We never deliver at QoS 2, so these can only be stale; ignoring them is safe.
            Packet::PubRec(_) | Packet::PubComp(_) => {}
            Packet::Subscribe(subscribe) => self.subscribe(conn, subscribe, &mut effects),
            Packet::Unsubscribe(unsubscribe) => self.unsubscribe(conn, unsubscribe, &mut effects),
            Packet::PingReq => effects.push(Effect::Send(conn, Packet::PingResp)),
            Packet::Disconnect => {
                if let Some(c) = self.connected_mut(conn) {
                    c.will = None; // MQTT-3.14.4-3
                }
                effects.push(Effect::Close(conn, CloseReason::ClientDisconnected));
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                effects.push(Effect::Close(
                    conn,
                    CloseReason::ProtocolViolation("server-to-client packet from a client"),
                ));
            }
        }
        effects
    }

    fn connected_mut(&mut self, conn: ConnId) -> Option<&mut Connected> {
        self.sessions.get_mut(&conn)?.connected.as_mut()
    }

    fn connect(&mut self, conn: ConnId, connect: Connect, effects: &mut Vec<Effect>) {
        let refuse = |code, reason, effects: &mut Vec<Effect>| {
            effects.push(Effect::Send(
                conn,
                Packet::ConnAck(ConnAck::new(code, false)),
            ));
            effects.push(Effect::Close(conn, reason));
        };
        if connect.protocol != Protocol::V4 {
            refuse(
                ConnectReturnCode::RefusedProtocolVersion,
                CloseReason::UnsupportedProtocol,
                effects,
            );
            return;
        }
        let client_id = if connect.client_id.is_empty() {
            if !connect.clean_session {
                refuse(
                    ConnectReturnCode::BadClientId,
                    CloseReason::ProtocolViolation("empty client id without clean session"),
                    effects,
                );
                return;
            }
            self.generated_ids += 1;
            format!("auto-{}", self.generated_ids)
        } else {
            connect.client_id
        };
        if let Some(previous) = self.by_client_id.insert(client_id.clone(), conn) {
            if previous != conn {
                effects.push(Effect::Close(previous, CloseReason::TakenOver));
            }
        }
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.connected = Some(Connected {
                client_id,
                keep_alive_secs: connect.keep_alive,
                will: connect.last_will,
                subscriptions: BTreeMap::new(),
                inflight: HashMap::new(),
                queued: VecDeque::new(),
                last_pkid: 0,
                qos2_received: HashSet::new(),
            });
        }
        self.stats.connects += 1;
        effects.push(Effect::Send(
            conn,
            Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
        ));
    }

    fn publish(&mut self, conn: ConnId, publish: Publish, effects: &mut Vec<Effect>) {
        if publish.topic.is_empty() || !valid_topic(&publish.topic) {
            effects.push(Effect::Close(
                conn,
                CloseReason::ProtocolViolation("invalid topic name"),
            ));
            return;
        }
        let Some(identity) = self.sessions.get(&conn).map(|s| s.identity.clone()) else {
            return;
        };
        if !self.policy.may_publish(&identity, &publish.topic) {
            self.stats.publishes_denied += 1;
            effects.push(Effect::Close(
                conn,
                CloseReason::PublishDenied {
                    identity,
                    topic: publish.topic,
                },
            ));
            return;
        }
        let pkid = publish.pkid;
        match publish.qos {
            QoS::AtMostOnce => self.accept_publish(conn, publish, effects),
            QoS::AtLeastOnce => {
                self.accept_publish(conn, publish, effects);
                effects.push(Effect::Send(conn, Packet::PubAck(PubAck::new(pkid))));
            }
            QoS::ExactlyOnce => {
                let first_time = self
                    .connected_mut(conn)
                    .is_some_and(|c| c.qos2_received.insert(pkid));
                if first_time {
                    self.accept_publish(conn, publish, effects);
                }
                effects.push(Effect::Send(conn, Packet::PubRec(PubRec::new(pkid))));
            }
        }
    }

    /// Retains (if asked) and routes an authorised publish.
    fn accept_publish(&mut self, _from: ConnId, publish: Publish, effects: &mut Vec<Effect>) {
        self.stats.publishes_in += 1;
        self.stats.payload_bytes_in += publish.payload.len() as u64;
        if publish.retain {
            if publish.payload.is_empty() {
                self.retained.remove(&publish.topic);
            } else if self.retained.contains_key(&publish.topic)
                || self.retained.len() < self.limits.max_retained
            {
                self.retained.insert(publish.topic.clone(), publish.clone());
            }
        }
        let targets: Vec<(ConnId, QoS)> = self
            .sessions
            .iter()
            .filter_map(|(&id, s)| {
                let c = s.connected.as_ref()?;
                let granted = c
                    .subscriptions
                    .iter()
                    .filter(|(filter, _)| matches(&publish.topic, filter))
                    .map(|(_, &qos)| qos)
                    .max_by_key(|&q| q as u8)?;
                Some((id, granted))
            })
            .collect();
        for (target, granted) in targets {
            let qos = if (publish.qos as u8) < (granted as u8) {
                publish.qos
            } else {
                granted
            };
            let mut delivery =
                Publish::from_bytes(publish.topic.clone(), qos, publish.payload.clone());
            delivery.retain = false;
            self.deliver(target, delivery, effects);
        }
    }

    /// Sends or queues one delivery to a subscriber.
    fn deliver(&mut self, target: ConnId, mut delivery: Publish, effects: &mut Vec<Effect>) {
        let limits = self.limits;
        let Some(c) = self.connected_mut(target) else {
            return;
        };
        if delivery.qos == QoS::AtMostOnce {
            effects.push(Effect::Send(target, Packet::Publish(delivery)));
            self.stats.deliveries += 1;
            return;
        }
        delivery.qos = QoS::AtLeastOnce;
        if c.inflight.len() < limits.max_inflight {
            delivery.pkid = c.allocate_pkid();
            c.inflight.insert(delivery.pkid, delivery.clone());
            effects.push(Effect::Send(target, Packet::Publish(delivery)));
            self.stats.deliveries += 1;
        } else if c.queued.len() < limits.max_queued {
            c.queued.push_back(delivery);
        } else {
            effects.push(Effect::Close(target, CloseReason::SlowConsumer));
        }
    }

    fn delivery_acked(&mut self, conn: ConnId, pkid: u16, effects: &mut Vec<Effect>) {
        let Some(c) = self.connected_mut(conn) else {
            return;
        };
        if c.inflight.remove(&pkid).is_none() {
            return; // A duplicate or stale PUBACK.
        }
        if let Some(mut next) = c.queued.pop_front() {
            next.pkid = c.allocate_pkid();
            c.inflight.insert(next.pkid, next.clone());
            effects.push(Effect::Send(conn, Packet::Publish(next)));
            self.stats.deliveries += 1;
        }
    }

    fn subscribe(&mut self, conn: ConnId, subscribe: Subscribe, effects: &mut Vec<Effect>) {
        let Some(identity) = self.sessions.get(&conn).map(|s| s.identity.clone()) else {
            return;
        };
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut granted_filters = Vec::new();
        for filter in subscribe.filters {
            if valid_filter(&filter.path) && self.policy.may_subscribe(&identity, &filter.path) {
                let qos = if filter.qos == QoS::AtMostOnce {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                codes.push(SubscribeReasonCode::Success(qos));
                granted_filters.push((filter.path, qos));
            } else {
                self.stats.subscriptions_denied += 1;
                codes.push(SubscribeReasonCode::Failure);
            }
        }
        if let Some(c) = self.connected_mut(conn) {
            for (path, qos) in &granted_filters {
                c.subscriptions.insert(path.clone(), *qos);
            }
        }
        effects.push(Effect::Send(
            conn,
            Packet::SubAck(SubAck::new(subscribe.pkid, codes)),
        ));
        // MQTT-3.3.1-6: retained messages matching a new subscription follow its SUBACK.
        let retained: Vec<(Publish, QoS)> = self
            .retained
            .values()
            .filter_map(|p| {
                granted_filters
                    .iter()
                    .find(|(f, _)| matches(&p.topic, f))
                    .map(|(_, qos)| (p.clone(), *qos))
            })
            .collect();
        for (publish, granted) in retained {
            let qos = if (publish.qos as u8) < (granted as u8) {
                publish.qos
            } else {
                granted
            };
            let mut delivery = Publish::from_bytes(publish.topic, qos, publish.payload);
            delivery.retain = true;
            self.deliver(conn, delivery, effects);
        }
    }

    fn unsubscribe(&mut self, conn: ConnId, unsubscribe: Unsubscribe, effects: &mut Vec<Effect>) {
        if let Some(c) = self.connected_mut(conn) {
            for topic in &unsubscribe.topics {
                c.subscriptions.remove(topic);
            }
        }
        effects.push(Effect::Send(
            conn,
            Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)),
        ));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    const GW: ConnId = 1;
    const VIEWER: ConnId = 2;

    fn core() -> BrokerCore {
        BrokerCore::new(
            AccessPolicy::new("wardgate", "viewer"),
            Limits {
                max_inflight: 2,
                max_queued: 1,
                max_retained: 10,
            },
        )
    }

    fn connect(core: &mut BrokerCore, conn: ConnId, identity: &str, client_id: &str) {
        core.open(conn, identity.to_owned());
        let effects = core.handle(conn, Packet::Connect(Connect::new(client_id)));
        assert_eq!(
            effects,
            vec![Effect::Send(
                conn,
                Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false))
            )]
        );
    }

    fn subscribe(core: &mut BrokerCore, conn: ConnId, filter: &str) -> Vec<Effect> {
        core.handle(
            conn,
            Packet::Subscribe(Subscribe::new(filter, QoS::AtLeastOnce)),
        )
    }

    fn publish(topic: &str, pkid: u16, qos: QoS) -> Packet {
        let mut p = Publish::new(topic, qos, b"{}".to_vec());
        p.pkid = pkid;
        Packet::Publish(p)
    }

    #[test]
    fn first_packet_must_be_connect() {
        let mut c = core();
        c.open(GW, "gw".into());
        let effects = c.handle(GW, Packet::PingReq);
        assert!(matches!(
            effects.as_slice(),
            [Effect::Close(GW, CloseReason::ProtocolViolation(_))]
        ));
    }

    #[test]
    fn gateway_publish_reaches_observer_and_is_acked_after_routing() {
        let mut c = core();
        connect(&mut c, GW, "gw", "gw");
        connect(&mut c, VIEWER, "viewer", "viewer");
        let suback = subscribe(&mut c, VIEWER, "wardgate/#");
        assert!(
            matches!(&suback[0], Effect::Send(VIEWER, Packet::SubAck(s)) if s.return_codes == vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)])
        );

        let effects = c.handle(
            GW,
            publish("wardgate/gw/records/alarm", 7, QoS::AtLeastOnce),
        );
        assert_eq!(effects.len(), 2);
        match &effects[0] {
            Effect::Send(VIEWER, Packet::Publish(p)) => {
                assert_eq!(p.topic, "wardgate/gw/records/alarm");
                assert_eq!(p.qos, QoS::AtLeastOnce);
                assert_ne!(p.pkid, 0);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(effects[1], Effect::Send(GW, Packet::PubAck(PubAck::new(7))));
        assert_eq!(c.stats().publishes_in, 1);
    }

    #[test]
    fn policy_confines_identities_to_their_own_prefix() {
        let mut c = core();
        connect(&mut c, GW, "gw", "gw");
        let suback = subscribe(&mut c, GW, "wardgate/#");
        assert!(
            matches!(&suback[0], Effect::Send(GW, Packet::SubAck(s)) if s.return_codes == vec![SubscribeReasonCode::Failure])
        );
        let suback = subscribe(&mut c, GW, "wardgate/gw/commands/#");
        assert!(
            matches!(&suback[0], Effect::Send(GW, Packet::SubAck(s)) if s.return_codes == vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)])
        );

        let effects = c.handle(
            GW,
            publish("wardgate/other-gw/records/alarm", 1, QoS::AtLeastOnce),
        );
        assert!(matches!(
            effects.as_slice(),
            [Effect::Close(GW, CloseReason::PublishDenied { .. })]
        ));
        assert_eq!(c.stats().publishes_denied, 1);

        connect(&mut c, VIEWER, "viewer", "viewer");
        let effects = c.handle(VIEWER, publish("wardgate/viewer/x", 1, QoS::AtLeastOnce));
        assert!(matches!(
            effects.as_slice(),
            [Effect::Close(VIEWER, CloseReason::PublishDenied { .. })]
        ));

        let policy = AccessPolicy::new("wardgate", "viewer");
        assert!(!policy.may_publish("a/b", "wardgate/a/b/x"));
        assert!(!policy.may_subscribe("+", "wardgate/+/x"));
        assert!(!policy.may_subscribe("viewer", "wardgatex/#"));
        assert!(policy.may_subscribe("viewer", "wardgate/+/records/#"));
    }

    #[test]
    fn slow_subscriber_is_queued_then_disconnected() {
        let mut c = core();
        connect(&mut c, GW, "gw", "gw");
        connect(&mut c, VIEWER, "viewer", "viewer");
        subscribe(&mut c, VIEWER, "wardgate/#");
        let mut pkids = Vec::new();
        for i in 1..=4u16 {
            for e in c.handle(GW, publish("wardgate/gw/r", i, QoS::AtLeastOnce)) {
                match e {
                    Effect::Send(VIEWER, Packet::Publish(p)) => pkids.push(p.pkid),
                    Effect::Close(VIEWER, reason) => {
                        assert_eq!(i, 4, "closed too early");
                        assert_eq!(reason, CloseReason::SlowConsumer);
                    }
                    _ => {}
                }
            }
        }
        // Two in flight, one queued, the fourth overflowed.
        assert_eq!(pkids.len(), 2);
        let effects = c.handle(VIEWER, Packet::PubAck(PubAck::new(pkids[0])));
        assert!(
            matches!(effects.as_slice(), [Effect::Send(VIEWER, Packet::Publish(p))] if !pkids.contains(&p.pkid))
        );
    }

    #[test]
    fn qos2_is_routed_once_per_packet_id() {
        let mut c = core();
        connect(&mut c, GW, "gw", "gw");
        connect(&mut c, VIEWER, "viewer", "viewer");
        subscribe(&mut c, VIEWER, "wardgate/#");
        let first = c.handle(GW, publish("wardgate/gw/r", 5, QoS::ExactlyOnce));
        let again = c.handle(GW, publish("wardgate/gw/r", 5, QoS::ExactlyOnce));
        assert_eq!(first.len(), 2);
        assert_eq!(
            again,
            vec![Effect::Send(GW, Packet::PubRec(PubRec::new(5)))]
        );
        let rel = c.handle(GW, Packet::PubRel(rumqttc::mqttbytes::v4::PubRel::new(5)));
        assert_eq!(
            rel,
            vec![Effect::Send(GW, Packet::PubComp(PubComp::new(5)))]
        );
    }

    #[test]
    fn will_is_published_on_abnormal_close_only() {
        let mut c = core();
        connect(&mut c, VIEWER, "viewer", "viewer");
        subscribe(&mut c, VIEWER, "wardgate/#");
        for (graceful, expected) in [(false, 1usize), (true, 0usize)] {
            c.open(GW, "gw".into());
            let mut connect = Connect::new("gw");
            connect.last_will = Some(LastWill::new(
                "wardgate/gw/status",
                "offline",
                QoS::AtLeastOnce,
                false,
            ));
            c.handle(GW, Packet::Connect(connect));
            if graceful {
                c.handle(GW, Packet::Disconnect);
            }
            let effects = c.closed(GW);
            let wills = effects
                .iter()
                .filter(|e| matches!(e, Effect::Send(VIEWER, Packet::Publish(_))))
                .count();
            assert_eq!(wills, expected, "graceful = {graceful}");
        }
    }

    #[test]
    fn same_client_id_takes_over() {
        let mut c = core();
        connect(&mut c, GW, "gw", "gw");
        c.open(3, "gw".into());
        let effects = c.handle(3, Packet::Connect(Connect::new("gw")));
        assert_eq!(effects[0], Effect::Close(GW, CloseReason::TakenOver));
        // The old connection closing must not unregister the new one.
        c.closed(GW);
        c.open(4, "gw".into());
        let effects = c.handle(4, Packet::Connect(Connect::new("gw")));
        assert_eq!(effects[0], Effect::Close(3, CloseReason::TakenOver));
    }

    #[test]
    fn retained_message_follows_suback() {
        let mut c = core();
        connect(&mut c, GW, "gw", "gw");
        let mut p = Publish::new("wardgate/gw/status", QoS::AtLeastOnce, b"online".to_vec());
        p.pkid = 1;
        p.retain = true;
        c.handle(GW, Packet::Publish(p));
        connect(&mut c, VIEWER, "viewer", "viewer");
        let effects = subscribe(&mut c, VIEWER, "wardgate/+/status");
        assert!(matches!(
            &effects[0],
            Effect::Send(VIEWER, Packet::SubAck(_))
        ));
        assert!(
            matches!(&effects[1], Effect::Send(VIEWER, Packet::Publish(p)) if p.retain && &p.payload[..] == b"online")
        );
    }

    #[test]
    fn v5_connect_is_refused() {
        let mut c = core();
        c.open(GW, "gw".into());
        let mut connect = Connect::new("gw");
        connect.protocol = Protocol::V5;
        let effects = c.handle(GW, Packet::Connect(connect));
        assert_eq!(
            effects,
            vec![
                Effect::Send(
                    GW,
                    Packet::ConnAck(ConnAck::new(
                        ConnectReturnCode::RefusedProtocolVersion,
                        false
                    ))
                ),
                Effect::Close(GW, CloseReason::UnsupportedProtocol),
            ]
        );
    }
}
