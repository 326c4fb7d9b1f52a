//! "Did you mean": the closest known name to a mistyped one.

/// `; did you mean "x"?` when a known name is close to `name`, else "".
pub fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let best = known
        .into_iter()
        .filter(|k| *k != name)
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, k)) => format!("; did you mean {k:?}?"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_and_far_ones_are_not() {
        assert_eq!(
            did_you_mean("shop-stagin", ["shop-prod", "shop-staging"]),
            "; did you mean \"shop-staging\"?"
        );
        assert_eq!(did_you_mean("api", ["worker", "postgres"]), "");
    }
}
