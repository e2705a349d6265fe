//! The session directory shared by a cluster's nodes in Redis
//! (`[cluster] redis-url`): which node's SIP address holds each user's
//! session, so a node that receives an INVITE for a user signed in on
//! another node — a trunk that does not register, behind a dispatcher —
//! can redirect it there (302) instead of refusing it.
//!
//! One key per user, `gw:user:<user>` → the SIP `host:port` of the node
//! with the user's newest session, written when a session is made, kept
//! alive by [`Directory::refresh`] (the entries expire if their node dies)
//! and removed when the node's last session of the user ends — only if it
//! still names this node, so a newer session elsewhere is left alone.
//! Redis being away is never fatal: a lookup that fails or takes longer
//! than [`LOOKUP_TIMEOUT`] is "not known", and the node acts as one without
//! a directory. This is a thin driver of a store operators already run;
//! the redis crate does the protocol.

use std::time::Duration;

use redis::AsyncCommands;
use tokio::sync::OnceCell;

/// The longest an INVITE waits for the directory.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);
/// How long an entry lives without a refresh.
pub const ENTRY_TTL: Duration = Duration::from_secs(180);
/// How often a node writes its users' entries again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// Deletes the key only while it names this node.
const DELETE_IF_OURS: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("cluster.redis-url: {0}")]
    Url(String),
    #[error("redis: {0}")]
    Redis(String),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

pub struct Directory {
    client: redis::Client,
    connection: OnceCell<redis::aio::ConnectionManager>,
    /// This node's SIP address as the others name it (`host:port`).
    node_sip: String,
}

fn key(user: &str) -> String {
    format!("gw:user:{user}")
}

impl Directory {
    /// A directory at `url` for a node reached at SIP `node_sip`; connects
    /// on first use.
    pub fn new(url: &str, node_sip: String) -> Result<Self, DirectoryError> {
        let client = redis::Client::open(url).map_err(|e| DirectoryError::Url(e.to_string()))?;
        Ok(Directory {
            client,
            connection: OnceCell::new(),
            node_sip,
        })
    }

    /// This node's SIP address as the directory names it.
    pub fn node_sip(&self) -> &str {
        &self.node_sip
    }

    async fn connection(&self) -> Result<redis::aio::ConnectionManager, DirectoryError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(LOOKUP_TIMEOUT))
            .set_response_timeout(Some(LOOKUP_TIMEOUT))
            .set_number_of_retries(1);
        self.connection
            .get_or_try_init(|| async {
                tokio::time::timeout(
                    LOOKUP_TIMEOUT * 2,
                    self.client.get_connection_manager_with_config(config),
                )
                .await
                .map_err(|_| DirectoryError::Timeout(LOOKUP_TIMEOUT * 2))?
                .map_err(|e| DirectoryError::Redis(e.to_string()))
            })
            .await
            .cloned()
    }

    /// `user` has a session here now.
    pub async fn publish(&self, user: &str) -> Result<(), DirectoryError> {
        let mut c = self.connection().await?;
        let ttl = ENTRY_TTL.as_secs();
        let set = c.set_ex::<_, _, ()>(key(user), &self.node_sip, ttl);
        tokio::time::timeout(LOOKUP_TIMEOUT, set)
            .await
            .map_err(|_| DirectoryError::Timeout(LOOKUP_TIMEOUT))?
            .map_err(|e| DirectoryError::Redis(e.to_string()))
    }

    /// `user` has no session here any more: forgets the entry if it is ours.
    pub async fn withdraw(&self, user: &str) -> Result<(), DirectoryError> {
        let mut c = self.connection().await?;
        let script = redis::Script::new(DELETE_IF_OURS);
        let mut call = script.key(key(user));
        call.arg(&self.node_sip);
        let run = call.invoke_async::<i64>(&mut c);
        tokio::time::timeout(LOOKUP_TIMEOUT, run)
            .await
            .map_err(|_| DirectoryError::Timeout(LOOKUP_TIMEOUT))?
            .map(|_| ())
            .map_err(|e| DirectoryError::Redis(e.to_string()))
    }

    /// The SIP address of the node with `user`'s session, unless it is this
    /// one or nobody's.
    pub async fn lookup(&self, user: &str) -> Result<Option<String>, DirectoryError> {
        let mut c = self.connection().await?;
        let get = c.get::<_, Option<String>>(key(user));
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, get)
            .await
            .map_err(|_| DirectoryError::Timeout(LOOKUP_TIMEOUT))?
            .map_err(|e| DirectoryError::Redis(e.to_string()))?;
        Ok(found.filter(|node| *node != self.node_sip))
    }

    /// Writes every entry of `users` (this node's sessions) again.
    pub async fn refresh(&self, users: &[String]) -> Result<(), DirectoryError> {
        for user in users {
            self.publish(user).await?;
        }
        Ok(())
    }
}
