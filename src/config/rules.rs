//! `routing.rules`: which sessions' reads go to replicas with given tags
//! (analytics replicas, reporting users), and what happens when none of
//! them is eligible.

use serde::Deserialize;

/// One rule: all the given fields of `match` must equal the session's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name, shown in `/status` and logs.
    pub name: String,
    /// What a session must be to match.
    #[serde(rename = "match")]
    pub matches: RuleMatch,
    /// Reads go to replicas that carry all these tags.
    pub tags: Vec<String>,
    /// When no such replica is eligible.
    #[serde(default)]
    pub fallback: RuleFallback,
}

/// `match:` of a rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMatch {
    /// Role name.
    #[serde(default)]
    pub user: Option<String>,
    /// Database name.
    #[serde(default)]
    pub database: Option<String>,
    /// `application_name` from the startup packet.
    #[serde(default)]
    pub application_name: Option<String>,
}

/// `fallback:` of a rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleFallback {
    /// Any ordinary replica (then `routing.no_replica`).
    #[default]
    Replica,
    /// The primary.
    Primary,
    /// Fail the read.
    Error,
}

impl RuleMatch {
    /// Whether a session with these attributes matches.
    pub fn matches(&self, user: &str, database: &str, application_name: &str) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.user, user)
            && eq(&self.database, database)
            && eq(&self.application_name, application_name)
    }

    fn is_empty(&self) -> bool {
        self.user.is_none() && self.database.is_none() && self.application_name.is_none()
    }
}

/// The first rule a session matches.
pub fn first_match<'a>(
    rules: &'a [RuleConfig],
    user: &str,
    database: &str,
    application_name: &str,
) -> Option<&'a RuleConfig> {
    rules
        .iter()
        .find(|r| r.matches.matches(user, database, application_name))
}

/// Checks the rules; returns the key and message of the first problem.
pub fn validate(rules: &[RuleConfig]) -> Result<(), (String, String)> {
    let mut names = std::collections::HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        if !names.insert(rule.name.as_str()) {
            return Err((
                format!("routing.rules[{i}].name"),
                format!("duplicate rule name {:?}", rule.name),
            ));
        }
        if rule.tags.is_empty() {
            return Err((
                format!("routing.rules[{i}].tags"),
                "a rule needs at least one tag".into(),
            ));
        }
        if rule.matches.is_empty() {
            return Err((
                format!("routing.rules[{i}].match"),
                "give at least one of user, database, application_name".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_wins() {
        let rules: Vec<RuleConfig> = serde_saphyr::from_str(
            "- { name: metabase, match: { application_name: metabase }, tags: [analytics] }\n\
             - { name: reporting, match: { user: reporting, database: app }, tags: [analytics], fallback: primary }\n",
        )
        .unwrap();
        assert!(validate(&rules).is_ok());
        assert_eq!(
            first_match(&rules, "app", "app", "metabase").unwrap().name,
            "metabase"
        );
        assert_eq!(
            first_match(&rules, "reporting", "app", "psql")
                .unwrap()
                .fallback,
            RuleFallback::Primary
        );
        assert!(first_match(&rules, "reporting", "other", "psql").is_none());
        assert!(first_match(&rules, "app", "app", "web").is_none());
    }
}
