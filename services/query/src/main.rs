use tributary_platform::{config, shutdown, telemetry};
use tributary_query::{Config, Query};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = config::parse();
    let telemetry = telemetry::init("query", &config.telemetry)?;
    let query = Query::build(config, prometheus::Registry::new()).await?;
    let result = query.run(shutdown::signal()).await;
    telemetry.shutdown();
    result
}
