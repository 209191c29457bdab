use tributary_dispatch::{Config, Dispatch};
use tributary_platform::{config, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = config::parse();
    let telemetry = telemetry::init("dispatch", &config.telemetry)?;
    let dispatch = Dispatch::build(config, prometheus::Registry::new()).await?;
    let result = dispatch.run(shutdown::signal()).await;
    telemetry.shutdown();
    result
}
