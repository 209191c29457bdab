use rdkafka::ClientConfig;

use crate::KafkaError;

/// Broker address and any extra librdkafka settings (TLS/SASL for a managed
/// Kafka: `--kafka-option security.protocol=SASL_SSL` ...).
#[derive(Clone, clap::Args)]
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
    /// librdkafka's TLS and SASL settings go here too, e.g.
    /// security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512,
    /// sasl.username=..., ssl.ca.location=/path/ca.pem (the password goes in
    /// --kafka-sasl-password).
    #[arg(
        long = "kafka-option",
        env = "TRIBUTARY_KAFKA_OPTIONS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub kafka_options: Vec<String>,
    /// The SASL password (librdkafka's sasl.password), apart from the
    /// options so it is never printed.
    #[arg(long, env = "TRIBUTARY_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<String>,
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
            kafka_sasl_password: None,
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
        if let Some(password) = &self.kafka_sasl_password {
            c.set("sasl.password", password);
        }
        Ok(c)
    }
}

/// Whether a librdkafka setting holds a secret (never printed).
fn is_secret_option(key: &str) -> bool {
    let key = key.trim();
    key.contains("password")
        || key.contains("secret")
        || key.ends_with(".pem")
        || key == "sasl.oauthbearer.config"
}

impl std::fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options: Vec<String> = self
            .kafka_options
            .iter()
            .map(|o| match o.split_once('=') {
                Some((k, _)) if is_secret_option(k) => format!("{k}=***"),
                _ => o.clone(),
            })
            .collect();
        f.debug_struct("KafkaArgs")
            .field("kafka_brokers", &self.kafka_brokers)
            .field("kafka_options", &options)
            .field(
                "kafka_sasl_password",
                &self.kafka_sasl_password.as_ref().map(|_| "***"),
            )
            .field("topic", &self.topic)
            .field("dlq_topic", &self.dlq_topic)
            .finish()
    }
}
