//! A QoS 1 subscriber to `#` over mutual TLS that keeps every message it receives, for
//! assertions on what actually reached the broker's other side.
//!
//! Invariants: messages are kept in arrival order; after a broker restart the subscriber
//! reconnects and subscribes again by itself ([`Subscriber::subscriptions`] counts the
//! SUBACKs, so a test can wait until it is listening again); the background task is
//! aborted when the [`Subscriber`] is dropped.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::HarnessError;

/// One received message.
#[derive(Clone, PartialEq, Eq)]
pub struct Received {
    /// The topic it was published on.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("topic", &self.topic)
            .field("payload_bytes", &self.payload.len())
            .finish()
    }
}

#[derive(Default)]
struct Shared {
    messages: Mutex<Vec<Received>>,
    subscriptions: Mutex<u64>,
    changed: Notify,
}

impl Shared {
    fn messages(&self) -> MutexGuard<'_, Vec<Received>> {
        self.messages.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn subscriptions(&self) -> MutexGuard<'_, u64> {
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// See the module documentation.
pub struct Subscriber {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects to `127.0.0.1:port` as `client_id` with `tls`, subscribes to `#` at QoS 1
    /// and returns once the broker confirmed the subscription. Must be called inside a
    /// tokio runtime.
    ///
    /// # Errors
    /// [`HarnessError::Timeout`] if the subscription was not confirmed within 15 s.
    pub async fn connect(
        port: u16,
        client_id: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, HarnessError> {
        Subscriber::connect_with(port, client_id, tls, true).await
    }

    /// Like [`Subscriber::connect`]; with `clean_session` false the broker keeps the
    /// subscription and queues messages while this subscriber is disconnected (a broker
    /// restart with persistence on), as a real cloud consumer's session would.
    ///
    /// # Errors
    /// As [`Subscriber::connect`].
    pub async fn connect_with(
        port: u16,
        client_id: &str,
        tls: Arc<rustls::ClientConfig>,
        clean_session: bool,
    ) -> Result<Self, HarnessError> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(clean_session)
            .set_max_packet_size(64 * 1024 * 1024, 64 * 1024)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);

        let shared = Arc::new(Shared::default());
        let task = {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            // Clean session: every (re)connection subscribes afresh.
                            let _ = client.try_subscribe("#", QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            *shared.subscriptions() += 1;
                            shared.changed.notify_waiters();
                        }
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            shared.messages().push(Received {
                                topic: publish.topic,
                                payload: publish.payload.to_vec(),
                            });
                            shared.changed.notify_waiters();
                        }
                        Ok(_) => {}
                        // The broker is down or restarting: poll again to reconnect.
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        };
        let subscriber = Subscriber { shared, task };
        subscriber
            .wait_subscribed(1, Duration::from_secs(15))
            .await?;
        Ok(subscriber)
    }

    /// Every message received so far, in arrival order.
    #[must_use]
    pub fn messages(&self) -> Vec<Received> {
        self.shared.messages().clone()
    }

    /// Messages received after the first `start` ones, in arrival order (for incremental
    /// checks of large streams).
    #[must_use]
    pub fn messages_since(&self, start: usize) -> Vec<Received> {
        let messages = self.shared.messages();
        messages
            .get(start..)
            .map(<[Received]>::to_vec)
            .unwrap_or_default()
    }

    /// Waits until more than `count` messages were received.
    ///
    /// # Errors
    /// [`HarnessError::Timeout`].
    pub async fn wait_beyond(&self, count: usize, timeout: Duration) -> Result<(), HarnessError> {
        self.wait(timeout, &format!("message #{}", count + 1), || {
            self.len() > count
        })
        .await
    }

    /// Number of messages received so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.shared.messages().len()
    }

    /// Whether nothing was received yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// SUBACKs received so far (one per successful (re)connection).
    #[must_use]
    pub fn subscriptions(&self) -> u64 {
        *self.shared.subscriptions()
    }

    /// Waits until at least `count` SUBACKs were received.
    ///
    /// # Errors
    /// [`HarnessError::Timeout`].
    pub async fn wait_subscribed(&self, count: u64, timeout: Duration) -> Result<(), HarnessError> {
        self.wait(
            timeout,
            &format!("subscription #{count} to be confirmed"),
            || self.subscriptions() >= count,
        )
        .await
    }

    /// Waits until `done` holds for the messages received so far.
    ///
    /// # Errors
    /// [`HarnessError::Timeout`].
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Result<(), HarnessError> {
        self.wait(timeout, what, || done(&self.shared.messages()))
            .await
    }

    async fn wait(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn() -> bool,
    ) -> Result<(), HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(HarnessError::Timeout {
                    what: what.to_owned(),
                    after: timeout,
                });
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
