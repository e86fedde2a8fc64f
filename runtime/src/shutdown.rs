//! Shutdown, one style for every process: a [`CancellationToken`]. Every long-running part
//! (the streams engine, the sink runner, the metrics server, the gateway) takes a token and
//! stops when it is cancelled; a part that fails can cancel it to stop its siblings, which a
//! one-shot future could not do; and any number of parts can wait on clones of it, which needs
//! no `Shared` wrapper.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT (Ctrl-C) or SIGTERM (what `kill`, systemd and docker
/// send), so every part of the process shuts down gracefully on either. Needs a tokio runtime:
/// it spawns the task that waits for the signal.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("signal received: shutting down");
        cancel.cancel();
    });
    token
}

/// Completes on SIGINT or SIGTERM.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        // No SIGTERM handler could be installed (no signal driver): Ctrl-C still works.
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
