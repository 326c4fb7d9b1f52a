//! Typed helpers over the Kubernetes API for the programs that talk to
//! Mahler from outside: the `mahler` CLI, the REST server and the
//! Terraform provider. They build on `mahler-api` and this crate only, and
//! never compile the engine or the reconcilers (`make lint` checks it).
//!
//! - [`summary`]: one line of truth per object (Ready or why not).
//! - [`graph`]: the Services and Connections of an environment as a graph,
//!   missing ends marked.
//! - [`explain`]: why a Service is not Ready, as a chain with what to do next.
//! - [`visible`]: Projects and Environments a member may see (they may
//!   not list them).
//! - [`wait`]: wait until an object is Ready, or say why it is not.
//! - [`Environment`]: everything of one environment, read in three lists.

pub mod explain;
pub mod graph;
pub mod summary;
pub mod visible;
pub mod wait;

use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use mahler_api::{Connection, Service};

pub use graph::Graph;
pub use summary::Summary;

/// One environment as users see it: its Environment, Services and Connections.
#[derive(Clone, Debug)]
pub struct Environment {
    pub environment: mahler_api::Environment,
    pub services: Vec<Service>,
    pub connections: Vec<Connection>,
}

impl Environment {
    /// Reads the Environment `name` and the Services and Connections of its namespace.
    pub async fn read(client: &Client, name: &str) -> Result<Self, kube::Error> {
        let environment = Api::<mahler_api::Environment>::all(client.clone())
            .get(name)
            .await?;
        Self::read_in(client, environment).await
    }

    /// The Services and Connections of an Environment already read: one
    /// LIST per kind, both at once.
    pub async fn read_in(
        client: &Client,
        environment: mahler_api::Environment,
    ) -> Result<Self, kube::Error> {
        let ns = environment.namespace_name();
        let lp = ListParams::default();
        let (services, connections) = (
            Api::<Service>::namespaced(client.clone(), &ns),
            Api::<Connection>::namespaced(client.clone(), &ns),
        );
        let (services, connections) =
            futures::try_join!(services.list(&lp), connections.list(&lp))?;
        let (mut services, mut connections) = (services.items, connections.items);
        services.sort_by_key(|s| s.name_any());
        connections.sort_by_key(|c| c.name_any());
        Ok(Environment {
            environment,
            services,
            connections,
        })
    }

    /// The connection graph.
    pub fn graph(&self) -> Graph {
        Graph::of(&self.services, &self.connections)
    }

    /// A summary per Service, in name order.
    pub fn summaries(&self) -> Vec<Summary> {
        self.services.iter().map(Summary::of_service).collect()
    }
}
