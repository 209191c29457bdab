use tributary_ingest::{Config, Ingest};
use tributary_platform::{config, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = config::parse();
    let telemetry = telemetry::init("ingest", &config.telemetry)?;
    let registry = prometheus::Registry::new();
    let ingest = Ingest::build(config, registry).await?;
    let result = ingest.run(shutdown::signal()).await;
    telemetry.shutdown();
    result
}
