use tributary_admin::{Admin, Config};
use tributary_platform::{config, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = config::parse();
    let telemetry = telemetry::init("admin", &config.telemetry)?;
    let admin = Admin::build(config, prometheus::Registry::new()).await?;
    let result = admin.run(shutdown::signal()).await;
    telemetry.shutdown();
    result
}
