//! `tributary-ctl`: the operator's tool.
//!
//! - `migrate`: applies the embedded schema migrations and creates the topics
//!   with the configured partition count (Helm runs it as a pre-install Job,
//!   deploy.sh before starting the services).
//! - `produce-raw`: produces arbitrary bytes to a topic, so tests can plant
//!   poison records (Debian's kcat is too old for the broker).
//! - `generate-key`: prints a new API key, e.g. for the bootstrap admin key.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use tributary_kafka::KafkaArgs;
use tributary_kafka::admin::{self, TopicOutcome};
use tributary_kafka::producer::{Producer, ProducerSettings, Record};
use tributary_platform::config;
use tributary_store::PoolConfig;

#[derive(Debug, Parser)]
#[command(name = "tributary-ctl", version, about = "Tributary operator tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply schema migrations and create the topics (idempotent).
    Migrate(MigrateArgs),
    /// Produce one record of raw bytes to a topic.
    ProduceRaw(ProduceRawArgs),
    /// Print a new API key (trb_<key_id>_<secret>) for
    /// TRIBUTARY_BOOTSTRAP_ADMIN_KEY. It is not stored anywhere: keep it
    /// secret. Keys for clients come from AdminService.CreateApiKey.
    GenerateKey,
}

#[derive(Debug, clap::Args)]
struct MigrateArgs {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "TRIBUTARY_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:55432/tributary",
        hide_default_value = true,
        hide_env_values = true
    )]
    database_url: String,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Partitions of the events and dead-letter topics when created. The
    /// broker cannot add partitions later: choose for the largest processor
    /// replica count you will run.
    #[arg(long, env = "TRIBUTARY_PARTITIONS", default_value_t = 6,
          value_parser = clap::value_parser!(i32).range(1..=1024))]
    partitions: i32,
    /// Replication factor of the topics when created.
    #[arg(long, env = "TRIBUTARY_REPLICATION_FACTOR", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..=16))]
    replication_factor: i32,
    /// Apply only the schema, not the topics.
    #[arg(long)]
    skip_topics: bool,
    /// Create only the topics, not the schema.
    #[arg(long)]
    skip_schema: bool,
}

#[derive(Debug, clap::Args)]
struct ProduceRawArgs {
    /// The broker and its TLS/SASL settings; --topic is the target (it must
    /// exist).
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Record key (UTF-8).
    #[arg(long)]
    key: Option<String>,
    /// Record value as UTF-8 text.
    #[arg(
        long,
        conflicts_with = "value_hex",
        required_unless_present = "value_hex"
    )]
    value: Option<String>,
    /// Record value as hex digits.
    #[arg(long)]
    value_hex: Option<String>,
    /// A header as KEY=VALUE (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli: Cli = config::parse();
    tracing_subscriber_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Migrate(args) => migrate(args).await,
            Command::ProduceRaw(args) => produce_raw(args).await,
            Command::GenerateKey => {
                let key = tributary_platform::auth::key::generate(false)?;
                println!("{}", key.key);
                Ok(())
            }
        }
    })
}

fn tracing_subscriber_init() {
    let args = config::TelemetryArgs {
        log_filter: std::env::var("TRIBUTARY_LOG").unwrap_or_else(|_| "info".into()),
        log_format: config::LogFormat::Text,
        otlp_endpoint: None,
    };
    // Without a subscriber the tool still works; it only logs less.
    if let Err(e) = tributary_platform::telemetry::init("ctl", &args) {
        eprintln!("warning: logging not initialised: {e}");
    }
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    if !args.skip_schema {
        let pool = tributary_store::pool::build(&PoolConfig::new(&args.database_url))?;
        let applied = tributary_store::migrate::run(&pool)
            .await
            .context("schema migration failed")?;
        println!(
            "schema: {} migration(s) applied, {} known",
            applied.len(),
            tributary_store::migrate::MIGRATIONS.len()
        );
    }
    if !args.skip_topics {
        let client = admin::client(&args.kafka)?;
        for topic in [&args.kafka.topic, &args.kafka.dlq_topic] {
            let outcome = admin::ensure_topic(
                &client,
                topic,
                args.partitions,
                args.replication_factor,
                Duration::from_secs(10),
            )
            .await
            .with_context(|| format!("cannot create topic {topic}"))?;
            match outcome {
                TopicOutcome::Created => {
                    println!("topic {topic}: created with {} partitions", args.partitions)
                }
                TopicOutcome::Existed { partitions } if partitions != args.partitions => println!(
                    "topic {topic}: exists with {partitions} partitions (asked for {}; left as is)",
                    args.partitions
                ),
                TopicOutcome::Existed { partitions } => {
                    println!("topic {topic}: exists with {partitions} partitions")
                }
            }
        }
    }
    Ok(())
}

async fn produce_raw(args: ProduceRawArgs) -> anyhow::Result<()> {
    let value = match (&args.value, &args.value_hex) {
        (Some(v), None) => v.as_bytes().to_vec(),
        (None, Some(h)) => decode_hex(h)?,
        _ => bail!("give exactly one of --value and --value-hex"),
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        let Some((k, v)) = h.split_once('=') else {
            config::invalid("--header", format!("{h:?} is not KEY=VALUE"));
        };
        headers.push((k.to_owned(), v.to_owned()));
    }
    let header_refs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let producer = Producer::new(
        &args.kafka,
        &ProducerSettings::default(),
        &prometheus::Registry::new(),
    )?;
    let delivered = producer
        .send(Record {
            topic: &args.kafka.topic,
            key: args.key.as_deref().map(str::as_bytes),
            value: &value,
            headers: &header_refs,
        })
        .await?;
    println!(
        "produced to {} partition {} offset {}",
        args.kafka.topic, delivered.partition, delivered.offset
    );
    Ok(())
}

fn decode_hex(s: &str) -> anyhow::Result<Vec<u8>> {
    let s = s.trim();
    if !s.is_ascii() {
        bail!("--value-hex must hold only hex digits");
    }
    if !s.len().is_multiple_of(2) {
        bail!("--value-hex has an odd number of digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .with_context(|| format!("--value-hex: {:?} is not a hex byte", &s[i..i + 2]))
        })
        .collect()
}
