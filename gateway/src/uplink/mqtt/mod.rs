//! The MQTT uplink: publishes spooled records to a cloud broker over mutual TLS, QoS 1,
//! and deletes them from the spool only on the broker's PUBACK.
//!
//! # Wire format
//!
//! Every publish carries one JSON [`wardgate_proto::UplinkBatch`]
//! (`{"schema":1,"gateway":"<id>","records":[...]}`, compact, UTF-8) holding consecutive
//! records of a single priority, in spool order, up to the payload limit. Record bodies
//! are copied verbatim from the spool. Publishes are QoS 1, never retained. The gateway
//! sends no password: it authenticates with its X.509 client certificate only. It
//! subscribes to nothing, except the twin's desired-state topics when the twin is on
//! ([`run_with_twin`]; topics and QoS in [`crate::twin`]).
//!
//! # Profiles (part of the product interface: cloud-side routing depends on them)
//!
//! | | `generic` | `azure-iot-hub` | `aws-iot-core` |
//! |---|---|---|---|
//! | MQTT | 3.1.1, clean session | 3.1.1, clean session | 3.1.1, clean session |
//! | Client id | gateway id | device id = gateway id | thing name = gateway id |
//! | Username | none | `<hub host>/<device id>/?api-version=2021-04-12` | none |
//! | Topic | `wardgate/<id>/records/<priority>` | `devices/<id>/messages/events/$.ct=application%2Fjson&$.ce=utf-8&priority=<priority>` | `wardgate/<id>/records/<priority>` |
//! | Payload limit | 256 KiB | 256 KiB | 128 KiB |
//! | Keep-alive | 1–65535 s | 1–1177 s | 30–1200 s |
//! | Gateway id | 1–128 of `A-Za-z0-9-_.:` | same | 1–128 of `A-Za-z0-9-_:` |
//!
//! `<priority>` is `alarm`, `observation`, `state` or `log`, so a cloud rule can route
//! alarms apart from bulk observations (on IoT Hub through the `priority` application
//! property). The AWS topic has 3 slashes (the limit is 7) and does not start with `$`.
//! On AWS port 443 the gateway offers the ALPN protocol `x-amzn-mqtt-ca`.
//!
//! # Delivery (see also [`crate::uplink`])
//!
//! * Flow control: records are leased from the source only while fewer than
//!   `inflight_window` publishes await their PUBACK, so alarms that arrive during a
//!   backlog overtake it at the next free slot instead of queueing behind leased data.
//! * A record is acknowledged to the source only when the PUBACK of the publish carrying
//!   it *and of every earlier publish* has arrived ([`inflight`]).
//! * Sessions are clean: after any disconnect nothing of rumqttc's state is kept (a new
//!   client is built), the source's leases are released and replay starts from the spool,
//!   so there is exactly one place that decides what to resend.
//! * Reconnects back off exponentially with full jitter between `backoff_min` and
//!   `backoff_max`; a connection that stayed up for [`driver::STABLE_CONNECTION`] resets it.
//! * A publish unacknowledged for `ack_timeout` ends the session (a broker that answers
//!   pings but stopped acknowledging would otherwise stall the uplink forever).
//! * Credentials are re-read on every reconnect. At start, any configuration or
//!   credential error ends [`run`] with an error naming the key or file; later (a renewed
//!   certificate being written, say) it is reported in [`crate::uplink::UplinkStatus`] and
//!   retried with backoff while the rest of the gateway keeps spooling.

pub mod backoff;
pub mod batch;
pub mod config;
pub mod driver;
pub mod inflight;
pub mod tls;

pub use config::{MqttUplinkConfig, Profile};
pub use driver::{check_connection, run, run_with_twin};
