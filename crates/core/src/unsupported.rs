//! Fields the schema accepts that this version of Mahler does not act on
//! yet. None is silently ignored: an object using one gets a
//! `NotImplemented` condition (kstatus ignores it, so it is not a failure)
//! and a Warning Event naming the fields. The issue that implements a field
//! removes it from here.

use mahler_api::{Connection, Environment, Project, ResourceTemplate, Service};

/// The fields of an object that are accepted but not implemented yet.
pub trait NotImplemented {
    /// Their paths (`spec.members`), in the order of the schema.
    fn not_implemented(&self) -> Vec<&'static str>;
}

impl NotImplemented for Project {
    fn not_implemented(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

impl NotImplemented for Environment {
    fn not_implemented(&self) -> Vec<&'static str> {
        let spec = &self.spec;
        let mut fields = Vec::new();
        if spec.clone_from.is_some() {
            // Preview environments.
            fields.push("spec.cloneFrom");
        }
        fields
    }
}

impl NotImplemented for Service {
    fn not_implemented(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

impl NotImplemented for Connection {
    fn not_implemented(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

impl NotImplemented for ResourceTemplate {
    fn not_implemented(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// The `NotImplemented` condition's message for `fields`.
pub fn message(fields: &[&str]) -> String {
    let (list, verb) = match fields {
        [one] => (one.to_string(), "is"),
        _ => (fields.join(", "), "are"),
    };
    format!(
        "{list} {verb} accepted but not implemented yet in this version of Mahler and {} no effect; see docs/crds.md",
        if fields.len() == 1 { "has" } else { "have" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mahler_api::{EnvironmentSpec, ExposeSpec, Member, ProjectSpec, Role, ServiceSpec};

    #[test]
    fn fields_in_use_are_named_and_defaults_are_not() {
        let mut env = Environment::new(
            "shop-staging",
            EnvironmentSpec {
                project: "shop".into(),
                protected: Some(false),
                ..Default::default()
            },
        );
        assert!(env.not_implemented().is_empty());
        // Protected environments and members are implemented (issue 12).
        env.spec.protected = Some(true);
        assert!(env.not_implemented().is_empty());
        // Telemetry is implemented (issue 14).
        env.spec.telemetry = Some(Default::default());
        assert!(env.not_implemented().is_empty());
        env.spec.clone_from = Some("shop-production".into());
        assert_eq!(env.not_implemented(), vec!["spec.cloneFrom"]);
        assert_eq!(
            message(&["spec.cloneFrom", "spec.protected"]),
            "spec.cloneFrom, spec.protected are accepted but not implemented yet in this version of Mahler and have no effect; see docs/crds.md"
        );

        let mut project = Project::new("shop", ProjectSpec::default());
        project.spec.members.push(Member {
            user: Some("alice".into()),
            group: None,
            role: Role::Admin,
        });
        assert!(project.not_implemented().is_empty());

        let mut svc = Service::new("api", ServiceSpec::default());
        assert!(svc.not_implemented().is_empty());
        svc.spec.expose = Some(Box::new(ExposeSpec {
            host: "api.shop.example".into(),
            path: None,
        }));
        // Gateway routes are implemented (issue 13).
        assert!(svc.not_implemented().is_empty());
        assert_eq!(
            message(&["spec.cloneFrom"]),
            "spec.cloneFrom is accepted but not implemented yet in this version of Mahler and has no effect; see docs/crds.md"
        );
    }
}
