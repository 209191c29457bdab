use tributary_platform::{config, shutdown, telemetry};
use tributary_processor::{Config, Processor};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = config::parse();
    let telemetry = telemetry::init("processor", &config.telemetry)?;
    let processor = Processor::build(config, prometheus::Registry::new()).await?;
    let result = processor.run(shutdown::signal()).await;
    telemetry.shutdown();
    result
}
