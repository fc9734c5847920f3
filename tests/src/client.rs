//! Clients of the Rust client library pointed at harness-started nodes.

use std::time::Duration;

use sessiond_client::{Client, ClientBuilder};

use crate::Sessiond;

/// How long building a client may take before a test gives up.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30);

/// A client builder listing the binary-protocol address of every node.
pub fn builder_for(nodes: &[&Sessiond]) -> ClientBuilder {
    Client::builder().nodes(nodes.iter().map(|node| node.tcp.to_string()))
}

/// Builds `builder`, panicking (with the error) if it fails or hangs.
pub async fn build(builder: ClientBuilder) -> Client {
    match tokio::time::timeout(BUILD_TIMEOUT, builder.build()).await {
        Ok(Ok(client)) => client,
        Ok(Err(err)) => panic!("cannot build the client: {err}"),
        Err(_) => panic!("building the client took over {BUILD_TIMEOUT:?}"),
    }
}

/// A client of `nodes` with the default settings.
pub async fn client_for(nodes: &[&Sessiond]) -> Client {
    build(builder_for(nodes)).await
}
