//! `cargo run -p mahler-client --example status -- ENV [SERVICE]`: an
//! environment at a glance, then (with SERVICE) waits until it is Ready.
//! A small program on `mahler-api` + `mahler-client` only: what the CLI,
//! the REST server and the Terraform provider build on.

use std::time::Duration;

use kube::{Api, Client};
use mahler_api::Service;
use mahler_client::{Environment, wait};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let env = args.next().ok_or("usage: status ENV [SERVICE]")?;
    let client = Client::try_default().await?;
    let view = Environment::read(&client, &env).await?;
    for s in view.summaries() {
        println!(
            "{:<24} {:<12?} {:<18} {}",
            s.name,
            s.state,
            s.reason,
            s.url.unwrap_or_default()
        );
    }
    let graph = view.graph();
    for e in &graph.edges {
        let mark = if e.healthy { "" } else { " (broken)" };
        println!("{} -> {}:{}{mark}", e.from, e.to, e.port);
    }
    if let Some(service) = args.next() {
        let api: Api<Service> = Api::namespaced(client, &view.environment.namespace_name());
        let conditions: fn(&Service) -> &[_] = |s| {
            s.status
                .as_ref()
                .map(|st| st.conditions.as_slice())
                .unwrap_or_default()
        };
        wait::until_ready(&api, &service, Duration::from_secs(60), conditions).await?;
        println!("{service} is Ready");
    }
    Ok(())
}
