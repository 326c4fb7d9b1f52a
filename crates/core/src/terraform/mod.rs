//! Terraform, as pure functions: the workspace a template Service renders,
//! the `-json` stream OpenTofu prints, state-lock verdicts, plans and
//! outputs, the jobs the engine runs ([`job`]) and what a template Service
//! does next ([`decide`]).

pub mod decide;
pub mod job;
pub mod lock;
pub mod outputs;
pub mod plan;
pub mod record;
pub mod stream;
pub mod workspace;

use std::time::Duration;

/// Parses a duration such as `90s`, `30m`, `1h30m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    (num.is_empty() && !s.is_empty()).then_some(Duration::from_secs(total))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("5d"), None);
        assert_eq!(parse_duration("9999999999999999h"), None);
    }
}
