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
    /// How long events, dead letters and alerts are kept (`30d`, `36h`; `0`
    /// keeps everything): applied to the store after the migrations, and set
    /// as retention.ms on the topics it creates.
    #[arg(long, env = "TRIBUTARY_RETENTION", default_value = "30d",
          value_parser = tributary_platform::config::parse_retention)]
    retention: Duration,
    /// The time span of each new partition of events (`1d`, `6h`; from 1h to
    /// 31d). Changing it only affects partitions created afterwards. Unset:
    /// the stored width is kept (a new database starts with 1d).
    #[arg(long, env = "TRIBUTARY_PARTITION_WIDTH", value_parser = parse_width)]
    partition_width: Option<Duration>,
    /// Print what would be done (migrations, partitions to create or drop,
    /// rows past retention, topics) and change nothing.
    #[arg(long)]
    dry_run: bool,
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

fn parse_width(s: &str) -> Result<Duration, String> {
    let d = config::parse_duration(s)?;
    if d < Duration::from_secs(3600) || d > Duration::from_secs(31 * 86_400) {
        return Err(format!("{s:?}: a partition width is from 1h to 31d"));
    }
    if !d.as_secs().is_multiple_of(3600) || d.subsec_nanos() != 0 {
        return Err(format!("{s:?}: a partition width is whole hours"));
    }
    Ok(d)
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    if args.dry_run {
        return dry_run(&args).await;
    }
    if !args.skip_schema {
        let pool = tributary_store::pool::build(&PoolConfig::new(&args.database_url))?;
        let applied = tributary_store::migrate::run_with(&pool, args.partition_width)
            .await
            .context("schema migration failed")?;
        println!(
            "schema: {} migration(s) applied, {} known",
            applied.len(),
            tributary_store::migrate::MIGRATIONS.len()
        );
        if args.retention.is_zero() {
            println!("retention: 0 (everything is kept)");
        } else {
            let report = tributary_store::retention::apply(
                &pool,
                args.retention,
                std::time::SystemTime::now(),
                tributary_store::retention::DEFAULT_BUDGET,
            )
            .await
            .context("applying retention failed")?;
            if let Some(held) = report.detach_lock {
                println!(
                    "retention: detached the partitions past it in one transaction (lock on events held {} ms)",
                    held.as_millis()
                );
            }
            if !report.failed.is_empty() {
                eprintln!(
                    "retention: could not detach {} (the lock on events was busy for 5 s); the next run tries again",
                    report.failed.join(", ")
                );
            }
            for name in &report.dropped {
                println!("retention: dropped partition {name}");
            }
            for (table, n) in &report.deleted {
                if *n > 0 {
                    println!("retention: deleted {n} row(s) of {table}");
                }
            }
            if report.unfinished {
                println!(
                    "retention: rows past it remain after {} s on a table; admin's maintenance (or the next migrate) goes on",
                    tributary_store::retention::DEFAULT_BUDGET.as_secs()
                );
            }
        }
    }
    if !args.skip_topics {
        let client = admin::client(&args.kafka)?;
        for topic in [&args.kafka.topic, &args.kafka.dlq_topic] {
            let outcome = admin::ensure_topic(
                &client,
                topic,
                args.partitions,
                args.replication_factor,
                Some(args.retention).filter(|r| !r.is_zero()),
                Duration::from_secs(10),
            )
            .await
            .with_context(|| format!("cannot create topic {topic}"))?;
            match outcome {
                TopicOutcome::Created => println!(
                    "topic {topic}: created with {} partitions, retention.ms {}",
                    args.partitions,
                    retention_ms(args.retention)
                ),
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

/// retention.ms as the topics get it: -1 (forever) for a retention of 0.
fn retention_ms(retention: Duration) -> i128 {
    if retention.is_zero() {
        -1
    } else {
        retention.as_millis() as i128
    }
}

/// `migrate --dry-run`: reads, never writes.
async fn dry_run(args: &MigrateArgs) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now();
    if !args.skip_schema {
        let pool = tributary_store::pool::build(&PoolConfig::new(&args.database_url))?;
        let client = pool.get().await.context("cannot reach PostgreSQL")?;
        let pending = tributary_store::migrate::pending(&client)
            .await
            .context("cannot read the applied migrations")?;
        println!("schema: {} migration(s) to apply", pending.len());
        for m in &pending {
            println!("  {}: {}", m.version, m.summary());
        }
        let partitioned = !pending
            .iter()
            .any(|m| m.version == tributary_store::migrate::PARTITIONED_EVENTS);
        if !partitioned {
            for line in tributary_store::migrate::conversion_plan(&client)
                .await
                .context("cannot read events")?
            {
                println!("  {line}");
            }
            println!(
                "partitions and retention: planned once events is partitioned (run without --dry-run)"
            );
        } else {
            let existing = tributary_store::partitions::list(&client).await?;
            let stored = tributary_store::partitions::width(&client).await?;
            let width = args.partition_width.unwrap_or(stored);
            if width != stored {
                println!(
                    "partition width: {} s would become {} s (new partitions only)",
                    stored.as_secs(),
                    width.as_secs()
                );
            }
            let planned = tributary_store::partitions::plan(
                &existing,
                width,
                now,
                now + tributary_store::partitions::AHEAD,
            );
            println!(
                "partitions: {} exist, {} to create",
                existing.len(),
                planned.len()
            );
            for p in &planned {
                println!("  create {}", p.name);
            }
            if args.retention.is_zero() {
                println!("retention: 0 (everything is kept)");
            } else {
                let (drop, rows) =
                    tributary_store::retention::plan(&client, args.retention, now).await?;
                for name in &drop {
                    println!("retention: drop partition {name}");
                }
                for (table, n) in &rows {
                    println!("retention: {n} row(s) of {table} past it");
                }
            }
        }
    }
    if !args.skip_topics {
        let client = admin::client(&args.kafka)?;
        for topic in [&args.kafka.topic, &args.kafka.dlq_topic] {
            let outcome = tokio::task::block_in_place(|| {
                admin::partition_count(client.inner(), topic, Duration::from_secs(10))
            });
            match outcome {
                Ok(n) => println!("topic {topic}: exists with {n} partitions (left as is)"),
                Err(_) => println!(
                    "topic {topic}: would be created with {} partitions, retention.ms {}",
                    args.partitions,
                    retention_ms(args.retention)
                ),
            }
        }
    }
    println!("dry run: nothing was changed");
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
