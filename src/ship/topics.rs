//! The contract's topics, created at start when missing.
//!
//! Brokers that auto-create topics would do it with their own defaults, and
//! some (Tansu's SQLite storage, many production clusters) do not at all, so
//! `serve` and `sink` create what they use with `[kafka] partitions` and
//! `replication_factor`. Existing topics are left as they are.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

pub const CLICKS: &str = "clickedge.clicks";
pub const CONVERSIONS: &str = "clickedge.conversions";
pub const LINKS: &str = "clickedge.links";

/// What `serve` produces to.
pub const SERVE_TOPICS: &[&str] = &[CLICKS, CONVERSIONS, LINKS];

const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Creates the missing ones among `topics`. Returns whether all exist now;
/// failures are logged (the broker may simply be down) and retried by the
/// caller.
pub fn ensure(kafka: &KafkaConfig, client_id: &str, topics: &[&str]) -> bool {
    let admin: AdminClient<DefaultClientContext> = match ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", client_id)
        .create()
    {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "kafka: cannot create an admin client");
            return false;
        }
    };
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                kafka.partitions,
                TopicReplication::Fixed(kafka.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "kafka: cannot start a runtime for topic creation");
            return false;
        }
    };
    let result = rt.block_on(async {
        tokio::time::timeout(ADMIN_TIMEOUT * 2, admin.create_topics(&new, &opts)).await
    });
    match result {
        Ok(Ok(results)) => results.into_iter().all(|r| match r {
            Ok(name) => {
                tracing::info!(topic = %name, "kafka: topic created");
                true
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => true,
            Err((name, code)) => {
                tracing::warn!(topic = %name, error = ?code, "kafka: cannot create topic");
                false
            }
        }),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "kafka: topic creation failed");
            false
        }
        Err(_) => {
            tracing::warn!("kafka: topic creation timed out (is the broker up?)");
            false
        }
    }
}
