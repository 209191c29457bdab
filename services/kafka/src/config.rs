use rdkafka::ClientConfig;

use crate::KafkaError;

/// Broker address and any extra librdkafka settings (TLS/SASL for a managed
/// Kafka: `--kafka-option security.protocol=SASL_SSL` ...).
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap servers, comma-separated.
    #[arg(
        long,
        env = "TRIBUTARY_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_brokers: String,
    /// Extra librdkafka settings as KEY=VALUE (repeatable; in the environment,
    /// comma-separated).
    #[arg(
        long = "kafka-option",
        env = "TRIBUTARY_KAFKA_OPTIONS",
        value_delimiter = ','
    )]
    pub kafka_options: Vec<String>,
    /// The events topic.
    #[arg(long, env = "TRIBUTARY_TOPIC", default_value = crate::EVENTS_TOPIC)]
    pub topic: String,
    /// The dead-letter topic.
    #[arg(long, env = "TRIBUTARY_DLQ_TOPIC", default_value = crate::DLQ_TOPIC)]
    pub dlq_topic: String,
}

impl KafkaArgs {
    pub fn for_brokers(brokers: &str) -> Self {
        Self {
            kafka_brokers: brokers.to_owned(),
            kafka_options: Vec::new(),
            topic: crate::EVENTS_TOPIC.to_owned(),
            dlq_topic: crate::DLQ_TOPIC.to_owned(),
        }
    }

    /// A client configuration with the brokers and the extra options.
    pub fn client_config(&self) -> Result<ClientConfig, KafkaError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.kafka_brokers);
        for option in &self.kafka_options {
            let (k, v) = option
                .split_once('=')
                .ok_or_else(|| KafkaError::Option(option.clone()))?;
            c.set(k.trim(), v.trim());
        }
        Ok(c)
    }
}
