//! Whether the broker answers, known ahead of any call: a probe asks it for
//! the topic's metadata every second. While it does not answer, publishes are
//! refused at once with UNAVAILABLE and RetryInfo (instead of waiting out the
//! client's deadline on records that cannot be acknowledged), calls already
//! waiting are answered the same way, and `/ready` says why. The first answer
//! after an outage lets calls through again. A probe that times out while
//! records are being acknowledged does not count: the broker is busy, not
//! down.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tributary_kafka::producer::Producer;
use tributary_platform::status as pstatus;

/// How often the broker is asked, and how long an answer may take.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What a client refused for the broker's sake is told to wait.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The broker as the last probe saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// No probe has finished yet (the service just started).
    Unknown,
    Up,
    /// Why not.
    Down(String),
}

#[derive(Clone)]
pub struct BrokerHealth {
    state: watch::Receiver<State>,
}

impl BrokerHealth {
    /// Starts probing `topic` through `producer` until `token` is cancelled.
    pub fn probe(producer: Producer, topic: String, token: CancellationToken) -> Self {
        let (tx, state) = watch::channel(State::Unknown);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let asked = std::time::Instant::now();
                let seen = match producer.check_topic(&topic, PROBE_EVERY).await {
                    Ok(_) => State::Up,
                    // A broker that acknowledged records meanwhile is up,
                    // only too busy to answer the probe in time: calling it
                    // down would refuse everyone (and fail /ready) just when
                    // ingest is loaded.
                    Err(_) if producer.acked_since(asked) => State::Up,
                    Err(e) => State::Down(e.to_string()),
                };
                tx.send_if_modified(|state| {
                    if *state == seen {
                        return false;
                    }
                    match (&*state, &seen) {
                        (State::Down(_), State::Up) => tracing::info!("the broker answers again"),
                        (_, State::Down(why)) => tracing::warn!(
                            error = %why,
                            "the broker does not answer; refusing publishes until it does"
                        ),
                        _ => {}
                    }
                    *state = seen;
                    true
                });
            }
        });
        Self { state }
    }

    /// Why the broker is down (or not known to be up yet), or `None` when it
    /// answered the last probe.
    pub fn down(&self) -> Option<String> {
        match &*self.state.borrow() {
            State::Up => None,
            State::Unknown => Some("the broker has not answered yet".to_owned()),
            State::Down(why) => Some(why.clone()),
        }
    }

    /// UNAVAILABLE with RetryInfo when the broker is down. Right after
    /// start-up, waits for the first probe (at most [`PROBE_EVERY`] and a
    /// little), so the first calls are not refused for want of a probe.
    pub async fn check(&self) -> Result<(), Status> {
        let mut state = self.state.clone();
        let first = state.wait_for(|s| *s != State::Unknown);
        let _ = tokio::time::timeout(PROBE_EVERY + Duration::from_millis(500), first).await;
        match self.down() {
            None => Ok(()),
            Some(why) => Err(refused(&why)),
        }
    }

    /// Resolves when the broker goes down, with why.
    pub async fn went_down(&self) -> String {
        let mut state = self.state.clone();
        let why = state
            .wait_for(|s| matches!(s, State::Down(_)))
            .await
            .ok()
            .map(|s| match &*s {
                State::Down(why) => why.clone(),
                _ => String::new(),
            });
        match why {
            Some(why) => why,
            // The probe stopped (shutting down): nothing more will come.
            None => std::future::pending().await,
        }
    }
}

/// The answer to a publish the broker cannot take now.
pub fn refused(why: &str) -> Status {
    pstatus::unavailable_retry(
        format!(
            "the broker is unreachable ({why}); retry in {} s",
            RETRY_AFTER.as_secs()
        ),
        RETRY_AFTER,
    )
}
