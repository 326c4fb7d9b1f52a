//! Digests and comparisons of Kubernetes objects as JSON: what decides
//! whether an apply is needed. Pure; the controller's apply path and its
//! child caches use the same functions, so "up to date" means one thing.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde_json::Value;

/// A digest of an object's fields, equal for two objects exactly when
/// [`first_difference`] finds no difference either way, with one deliberate
/// narrowing: quantities compare by value ("0.5" and "500m" alike) only
/// under `requests` and `limits` (resource amounts, which the API server
/// rewrites in canonical form), not in every string that happens to parse
/// as a number (an env value, a label). Map keys in any order; null and
/// empty lists and maps are the same as absent.
pub fn fields_digest(value: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    hash_normalized(value, false, &mut h);
    h.finish()
}

fn hash_normalized(value: &Value, quantities: bool, h: &mut DefaultHasher) {
    match value {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => (1u8, b).hash(h),
        Value::Number(n) => (2u8, n.to_string()).hash(h),
        Value::String(s) => match parse_quantity(s).filter(|_| quantities) {
            Some(q) => (3u8, canonical_number(q)).hash(h),
            None => (4u8, s).hash(h),
        },
        Value::Array(items) => {
            (5u8, items.len()).hash(h);
            for item in items {
                hash_normalized(item, quantities, h);
            }
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> =
                map.keys().filter(|k| !is_empty(&map[k.as_str()])).collect();
            keys.sort();
            (6u8, keys.len()).hash(h);
            for k in keys {
                k.hash(h);
                let quantities = quantities || k == "requests" || k == "limits";
                hash_normalized(&map[k.as_str()], quantities, h);
            }
        }
    }
}

/// A number to 12 significant digits, so "0.1" and "100m" hash alike.
fn canonical_number(x: f64) -> String {
    format!("{x:.11e}")
}

/// Whether every field set in `desired` has the same value in `observed`.
/// Lists must match element for element (same length); empty lists, maps and
/// nulls in `desired` match an absent field (the API server drops them);
/// quantities compare by value ("0.5" equals "500m").
pub fn is_subset(desired: &Value, observed: &Value) -> bool {
    first_difference(desired, observed).is_none()
}

/// The path of the first field where `observed` differs from `desired` (by
/// the rules of [`is_subset`]), e.g. `.spec.template.spec.containers[0].image`.
pub fn first_difference(desired: &Value, observed: &Value) -> Option<String> {
    let differs =
        match (desired, observed) {
            (Value::Null, _) => false,
            (Value::Object(d), Value::Object(o)) => {
                return d.iter().find_map(|(k, dv)| match o.get(k) {
                    Some(ov) => first_difference(dv, ov).map(|p| format!(".{k}{p}")),
                    None => (!is_empty(dv)).then(|| format!(".{k}")),
                });
            }
            (Value::Object(d), Value::Null) => !d.is_empty(),
            (Value::Array(d), Value::Array(o)) if d.len() == o.len() => {
                return d.iter().zip(o).enumerate().find_map(|(i, (dv, ov))| {
                    first_difference(dv, ov).map(|p| format!("[{i}]{p}"))
                });
            }
            (Value::Array(d), Value::Null) => !d.is_empty(),
            (Value::String(d), Value::String(o)) => d != o && !quantities_equal(d, o),
            (d, o) => d != o,
        };
    differs.then(String::new)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
        _ => false,
    }
}

/// Parses a Kubernetes quantity ("500m", "1.5Gi", "2e3") to a number.
pub fn parse_quantity(s: &str) -> Option<f64> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let s = s.trim();
    if s.is_empty()
        || !s.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '-' || c == '+')
    {
        return None;
    }
    for (suffix, factor) in SUFFIXES {
        if let Some(num) = s.strip_suffix(suffix) {
            return num.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    s.parse::<f64>().ok()
}

fn quantities_equal(a: &str, b: &str) -> bool {
    match (parse_quantity(a), parse_quantity(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn digests_ignore_key_order_and_empty_values_and_compare_resource_amounts_by_value() {
        let a = json!({"spec": {"replicas": 1, "labels": {}, "containers": [
            {"name": "a", "env": [], "resources": {"requests": {"cpu": "0.5", "memory": "64Mi"}}}]}});
        let b = json!({"spec": {"containers": [
            {"resources": {"requests": {"memory": "65536Ki", "cpu": "500m"}}, "name": "a"}], "replicas": 1}});
        assert_eq!(fields_digest(&a), fields_digest(&b));
        let c = json!({"spec": {"replicas": 2, "containers": [
            {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}}}]}});
        assert_ne!(fields_digest(&a), fields_digest(&c));
    }

    #[test]
    fn digests_compare_other_strings_as_written() {
        let env = |v: &str| json!({"env": [{"name": "T", "value": v}]});
        assert_ne!(
            fields_digest(&env("1718000000123")),
            fields_digest(&env("1718000000124"))
        );
        assert_ne!(fields_digest(&env("1000")), fields_digest(&env("1e3")));
        assert_ne!(
            fields_digest(&env("1")),
            fields_digest(&json!({"env": [{"name": "T", "value": 1}]}))
        );
    }

    #[test]
    fn server_defaults_do_not_count_as_drift() {
        let desired = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        let observed = json!({"spec": {"replicas": 2, "revisionHistoryLimit": 10, "template": {"spec": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "IfNotPresent"}], "dnsPolicy": "ClusterFirst"}}}});
        assert!(is_subset(&desired, &observed));
    }

    #[test]
    fn changed_or_removed_values_are_drift() {
        let desired = json!({"spec": {"containers": [{"image": "x:2"}]}});
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"containers": [{"image": "x:1"}]}})
        ));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"containers": [{"image": "x:2"}, {"image": "sidecar"}]}})
        ));
        assert!(!is_subset(&json!({"a": 1}), &json!({})));
    }

    #[test]
    fn empty_desired_collections_match_absent_fields() {
        assert!(is_subset(
            &json!({"metadata": {"labels": {}}, "env": []}),
            &json!({"metadata": {}})
        ));
    }

    #[test]
    fn quantities_compare_by_value() {
        assert!(is_subset(&json!({"cpu": "0.5"}), &json!({"cpu": "500m"})));
        assert!(is_subset(
            &json!({"memory": "1Gi"}),
            &json!({"memory": "1024Mi"})
        ));
        assert!(!is_subset(
            &json!({"memory": "1G"}),
            &json!({"memory": "1Gi"})
        ));
        assert!(!is_subset(
            &json!({"image": "nginx"}),
            &json!({"image": "nginx:1"})
        ));
        assert_eq!(parse_quantity("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("http"), None);
    }
}
