use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tributary_platform::{config, shutdown};

/// Receives OTLP/gRPC traces and writes each span as one JSON line.
#[derive(Debug, clap::Parser)]
#[command(name = "tributary-trace-sink", version, about)]
struct Args {
    /// OTLP/gRPC listen address.
    #[arg(
        long,
        env = "TRIBUTARY_TRACE_SINK_ADDR",
        default_value = "127.0.0.1:4317"
    )]
    listen: SocketAddr,
    /// File to append span lines to; standard output when unset.
    #[arg(long, env = "TRIBUTARY_TRACE_SINK_FILE")]
    output: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Args = config::parse();
    let sink: Box<dyn std::io::Write + Send> = match &args.output {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let listener = tributary_trace_sink::bind(args.listen)
        .await
        .with_context(|| format!("cannot bind {}", args.listen))?;
    eprintln!("trace sink listening on {}", args.listen);
    tributary_trace_sink::serve(listener, Arc::new(Mutex::new(sink)), shutdown::signal()).await?;
    Ok(())
}
