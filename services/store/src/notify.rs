//! LISTEN on a connection of its own: the caches that follow a table's
//! changes (event-type schemas, API keys, the tail) read its notifications.

use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use crate::tls::Connect;

/// A connection listening on some channels. Dropping it closes it.
pub struct Listener {
    // Kept: dropping the client would end the connection.
    _client: tokio_postgres::Client,
    notes: mpsc::UnboundedReceiver<String>,
    driver: tokio::task::JoinHandle<String>,
}

impl Listener {
    /// Connects and LISTENs; notifications sent from now on are received.
    pub async fn start(connect: &Connect, channels: &[&str]) -> Result<Self, String> {
        let (client, mut connection) = connect
            .connect()
            .await
            .map_err(|e| format!("connect: {}", crate::error::chain(&e)))?;
        let (notes_tx, notes) = mpsc::unbounded_channel::<String>();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        if notes_tx.send(n.payload().to_owned()).is_err() {
                            return "listener dropped".to_owned();
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return crate::error::chain(&e),
                }
            }
            "connection closed".to_owned()
        });
        // Channel names are ours (constants), never a caller's input.
        let sql: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
        if let Err(e) = client.batch_execute(&sql).await {
            driver.abort();
            return Err(format!("LISTEN: {}", crate::error::chain(&e)));
        }
        Ok(Self {
            _client: client,
            notes,
            driver,
        })
    }

    /// The next notification's payload; `Err` says why the connection ended.
    pub async fn recv(&mut self) -> Result<String, String> {
        match self.notes.recv().await {
            Some(payload) => Ok(payload),
            None => Err((&mut self.driver)
                .await
                .unwrap_or_else(|e| format!("listener task failed: {e}"))),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Runs `follow` again each time it ends (it returns why), after a pause
/// that grows with each failure in a row (`step` × failures, at most 20
/// steps), logging `what` with the reason. Never returns: race it against
/// a shutdown signal.
pub async fn follow_forever<F, Fut>(what: &'static str, step: std::time::Duration, mut follow: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let mut attempt: u32 = 0;
    loop {
        let why = follow().await;
        attempt = attempt.saturating_add(1);
        let pause = step * attempt.min(20);
        tracing::warn!(attempt, error = %why, retry_in = ?pause, "{what}");
        tokio::time::sleep(pause).await;
    }
}
