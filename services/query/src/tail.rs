//! TailEvents: one LISTEN connection per query replica reads each announced
//! batch once and fans it out to every tailing client, so N clients cost
//! PostgreSQL one query per batch, not N (and nothing while no one tails).
//! Each client filters in memory and has a bounded buffer: a client that
//! falls behind is ended with RESOURCE_EXHAUSTED instead of growing memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tonic::Status;
use tributary_platform::shutdown::CancellationToken;
use tributary_proto::v1::StoredEvent;
use tributary_store::Pool;
use tributary_store::events::{EventFilter, EventRow};

/// Events buffered per client before it counts as too slow.
pub const CLIENT_BUFFER: usize = 1024;
/// Batches the hub holds for a client that has not read them yet.
const HUB_CAPACITY: usize = 256;

#[derive(Clone)]
pub struct TailHub {
    batches: broadcast::Sender<Arc<Vec<EventRow>>>,
    /// Ends every tail when the service stops, so they do not hold up the drain.
    shutdown: CancellationToken,
}

impl TailHub {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            batches: broadcast::channel(HUB_CAPACITY).0,
            shutdown,
        }
    }

    /// Follows announced batches: events matching `filter` go to the returned
    /// stream until the client leaves.
    pub fn subscribe(
        &self,
        filter: EventFilter,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<StoredEvent, Status>> {
        let mut batches = self.batches.subscribe();
        let shutdown = self.shutdown.clone();
        // One slot more than the buffer: room for the final status.
        let (tx, rx) = mpsc::channel(CLIENT_BUFFER + 1);
        tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    () = tx.closed() => return,
                    () = shutdown.cancelled() => {
                        let _ = tx.try_send(Err(Status::unavailable("the query service is stopping; reconnect")));
                        return;
                    }
                    b = batches.recv() => b,
                };
                let batch = match batch {
                    Ok(b) => b,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx.try_send(Err(too_slow(&format!("missed {n} batches"))));
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ =
                            tx.try_send(Err(Status::unavailable("the query service is stopping")));
                        return;
                    }
                };
                for row in batch.iter().filter(|r| filter.matches(&r.candidate())) {
                    if tx.capacity() <= 1 {
                        let _ = tx.try_send(Err(too_slow("its buffer is full")));
                        return;
                    }
                    if tx
                        .try_send(Ok(crate::convert::stored_event(row.clone())))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    pub fn clients(&self) -> usize {
        self.batches.receiver_count()
    }
}

fn too_slow(why: &str) -> Status {
    Status::resource_exhausted(format!(
        "tail client too slow ({why}; at most {CLIENT_BUFFER} events are buffered); reconnect and read faster, or narrow the filter"
    ))
}

/// Listens for committed batches until `token` is cancelled, reconnecting
/// with backoff. Batches committed while disconnected are not replayed: a
/// tail is a live view (ListEvents reads the history).
pub async fn listen(pool: Pool, hub: TailHub, token: CancellationToken) {
    tokio::select! {
        () = token.cancelled() => {}
        () = tributary_store::notify::follow_forever(
            "tail listener disconnected",
            Duration::from_millis(200),
            || listen_once(&pool, &hub),
        ) => {}
    }
}

/// Follows committed batches until the connection fails; returns why.
async fn listen_once(pool: &Pool, hub: &TailHub) -> String {
    let mut listener = match tributary_store::notify::Listener::start(
        pool.connector(),
        &[tributary_store::tail::CHANNEL],
    )
    .await
    {
        Ok(l) => l,
        Err(e) => return e,
    };
    tracing::info!("tail listener connected");
    loop {
        let payload = match listener.recv().await {
            Ok(p) => p,
            Err(e) => return e,
        };
        if hub.clients() == 0 {
            continue;
        }
        let Some(ranges) = tributary_store::tail::decode(&payload) else {
            tracing::warn!(payload, "ignoring a malformed tail notification");
            continue;
        };
        let rows = pool
            .run(async |c| tributary_store::tail::rows_in(c, &ranges).await)
            .await;
        match rows {
            Ok(rows) if !rows.is_empty() => {
                let _ = hub.batches.send(Arc::new(rows));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a committed batch for tailing clients")
            }
        }
    }
}
