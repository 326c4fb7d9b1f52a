//! Names in URLs and bodies are checked before anything reaches Kubernetes:
//! every Mahler kind is named by a DNS-1123 label, with the CRDs' own
//! tighter rules (a leading letter, a shorter maximum) where they have one.

use crate::error::ApiError;

/// The Mahler kinds the API serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Project,
    Environment,
    Service,
    Connection,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Project => "Project",
            Kind::Environment => "Environment",
            Kind::Service => "Service",
            Kind::Connection => "Connection",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Kind::Project => "projects",
            Kind::Environment => "environments",
            Kind::Service => "services",
            Kind::Connection => "connections",
        }
    }

    /// `services.mahler.dev`: how RBAC names the resource.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Project => "projects.mahler.dev",
            Kind::Environment => "environments.mahler.dev",
            Kind::Service => "services.mahler.dev",
            Kind::Connection => "connections.mahler.dev",
        }
    }

    pub fn namespaced(self) -> bool {
        matches!(self, Kind::Service | Kind::Connection)
    }

    /// The longest name the CRD accepts (a DNS label is at most 63).
    pub fn max_len(self) -> usize {
        match self {
            Kind::Project => 30,
            Kind::Environment => 63,
            Kind::Service => 50,
            Kind::Connection => 63,
        }
    }

    /// Whether the CRD requires the name to start with a letter.
    pub fn letter_first(self) -> bool {
        !matches!(self, Kind::Connection)
    }
}

/// Whether `name` is a DNS-1123 label: lowercase letters, digits and '-',
/// starting and ending with a letter or digit, at most 63 characters.
pub fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The JSON Schema pattern of a name of `kind` (the OpenAPI document).
pub fn pattern(kind: Kind) -> &'static str {
    if kind.letter_first() {
        "^[a-z]([-a-z0-9]*[a-z0-9])?$"
    } else {
        "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    }
}

/// Checks a name of `kind`; `field` names where it came from
/// (`metadata.name`, or the path parameter).
pub fn check(kind: Kind, field: &str, name: &str) -> Result<(), ApiError> {
    let what = kind.as_str();
    if name.is_empty() {
        return Err(ApiError::field(
            field,
            format!("a {what} name cannot be empty"),
        ));
    }
    if !is_dns_label(name) {
        return Err(ApiError::field(
            field,
            format!(
                "{:?} is not a valid {what} name: a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit)",
                truncate(name)
            ),
        ));
    }
    if kind.letter_first() && !name.as_bytes()[0].is_ascii_lowercase() {
        return Err(ApiError::field(
            field,
            format!("{name:?} is not a valid {what} name: it must start with a letter"),
        ));
    }
    if name.len() > kind.max_len() {
        return Err(ApiError::field(
            field,
            format!(
                "{name:?} is not a valid {what} name: at most {} characters",
                kind.max_len()
            ),
        ));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(80).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "api", "shop-dev", "a1", "0a", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "ä",
            "a b",
            &"a".repeat(64),
            "a/b",
            "..",
        ] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn kinds_add_the_crd_rules() {
        assert!(check(Kind::Project, "name", "shop").is_ok());
        assert!(check(Kind::Project, "name", &"a".repeat(31)).is_err());
        assert!(check(Kind::Service, "name", &"a".repeat(50)).is_ok());
        assert!(check(Kind::Service, "name", &"a".repeat(51)).is_err());
        assert!(check(Kind::Service, "name", "1api").is_err());
        assert!(check(Kind::Connection, "name", "1api-db").is_ok());
        assert!(check(Kind::Environment, "name", &"a".repeat(63)).is_ok());
        let e = check(Kind::Service, "metadata.name", "Bad_Name").unwrap_err();
        assert_eq!(e.code(), 400);
        assert_eq!(e.0.error.field.as_deref(), Some("metadata.name"));
        assert!(
            e.0.error.message.contains("DNS-1123"),
            "{}",
            e.0.error.message
        );
    }

    #[test]
    fn patterns_agree_with_check() {
        assert_eq!(pattern(Kind::Service), "^[a-z]([-a-z0-9]*[a-z0-9])?$");
        assert_eq!(pattern(Kind::Connection), "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$");
    }
}
