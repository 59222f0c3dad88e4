//! Remote control: a JSON object of live knobs (from `[sink.mqtt]`'s `<prefix>/set`) applied
//! onto a copy of the config in force, validated exactly as a config file is, and handed to the
//! path a SIGHUP reload takes (`app::apply_reload`).
//!
//! Only the knobs a reload applies at once can be set: `budget` (target_ms, percentile,
//! m_min, m_max, m_step, margin) and `reduce` (strategy, m, and `ailurus` k, radius, delta,
//! delta_radius, fallback). Any other key is a problem naming it. A later SIGHUP reads the
//! config file again, and the file wins.
//!
//! ```json
//! {"id": "op-17", "budget": {"target_ms": 350}, "reduce": {"m": 96}}
//! ```
//!
//! Must not touch the pipeline: it returns the new config; the caller applies it.

use serde::Deserialize;

use crate::config::{Config, Problem};
use crate::service::reload_plan;
use crate::sink::ControlOutcome;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetMessage {
    /// Echoed in the result, for the sender to match.
    #[serde(default)]
    #[allow(dead_code)]
    id: Option<serde_json::Value>,
    budget: Option<BudgetSet>,
    reduce: Option<ReduceSet>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetSet {
    target_ms: Option<f64>,
    percentile: Option<f64>,
    m_min: Option<usize>,
    m_max: Option<usize>,
    m_step: Option<usize>,
    margin: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReduceSet {
    strategy: Option<String>,
    m: Option<usize>,
    ailurus: Option<AilurusSet>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AilurusSet {
    k: Option<usize>,
    radius: Option<usize>,
    delta: Option<String>,
    delta_radius: Option<usize>,
    fallback: Option<String>,
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

fn problem(key: &str, msg: impl Into<String>) -> Problem {
    Problem { key: key.into(), msg: msg.into() }
}

/// `current` with the knobs of `body` applied, validated; or every problem.
pub fn apply_set(current: &Config, body: &serde_json::Value) -> Result<Config, Vec<Problem>> {
    if !body.is_object() {
        return Err(vec![problem("[set]", "must be a JSON object like {\"budget\": {\"target_ms\": 300}}")]);
    }
    let msg: SetMessage = serde_json::from_value(body.clone()).map_err(|e| vec![problem("[set]", e.to_string())])?;
    let mut new = current.clone();
    if let Some(b) = msg.budget {
        let nb = &mut new.budget;
        set(&mut nb.target_ms, b.target_ms);
        set(&mut nb.percentile, b.percentile);
        set(&mut nb.m_min, b.m_min);
        set(&mut nb.m_max, b.m_max);
        set(&mut nb.m_step, b.m_step);
        set(&mut nb.margin, b.margin);
    }
    if let Some(r) = msg.reduce {
        let nr = &mut new.reduce;
        set(&mut nr.strategy, r.strategy.as_deref().map(Into::into));
        set(&mut nr.m, r.m);
        if let Some(a) = r.ailurus {
            let na = &mut nr.ailurus;
            set(&mut na.k, a.k);
            set(&mut na.radius, a.radius);
            set(&mut na.delta, a.delta.as_deref().map(Into::into));
            set(&mut na.delta_radius, a.delta_radius);
            set(&mut na.fallback, a.fallback.as_deref().map(Into::into));
        }
    }
    let problems = new.validate();
    if problems.0.is_empty() {
        Ok(new)
    } else {
        Err(problems.0)
    }
}

/// The sections a new config changes, as the result names them.
pub fn changed_sections(old: &Config, new: &Config) -> Vec<String> {
    let plan = reload_plan(old, new);
    let mut v = Vec::new();
    if plan.budget {
        v.push("budget".to_string());
    }
    if plan.reduce {
        v.push("reduce".to_string());
    }
    v
}

/// Apply `body` onto `current`: the new config (to hand to `app::apply_reload`) and the
/// outcome to answer with; on rejection the config stays.
pub fn handle(current: &Config, body: &serde_json::Value) -> (Option<Config>, ControlOutcome) {
    match apply_set(current, body) {
        Ok(new) => {
            let changed = changed_sections(current, &new);
            (Some(new), ControlOutcome::Applied { changed })
        }
        Err(problems) => (None, ControlOutcome::Rejected { problems }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> Config {
        Config::embedded_default().unwrap()
    }

    #[test]
    fn a_budget_target_is_applied_and_named() {
        let c = cfg();
        let (new, outcome) = handle(&c, &json!({"id": 3, "budget": {"target_ms": 350.0}, "reduce": {"m": 96}}));
        let new = new.unwrap();
        assert_eq!(new.budget.target_ms, 350.0);
        assert_eq!(new.reduce.m, 96);
        assert_eq!(outcome, ControlOutcome::Applied { changed: vec!["budget".into(), "reduce".into()] });
        assert_eq!(new.model, c.model);
    }

    #[test]
    fn bad_values_and_unknown_keys_are_problems_naming_the_key() {
        let c = cfg();
        let Err(p) = apply_set(&c, &json!({"budget": {"target_ms": -1.0, "m_min": 0}, "reduce": {"strategy": "fast"}}))
        else {
            panic!("accepted")
        };
        let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"[budget] target_ms"), "{p:?}");
        assert!(keys.contains(&"[reduce] strategy"), "{p:?}");
        let Err(p) = apply_set(&c, &json!({"reduce": {"cut": 2}})) else { panic!("accepted") };
        assert_eq!(p[0].key, "[set]");
        assert!(p[0].msg.contains("cut"), "{p:?}");
        let Err(p) = apply_set(&c, &json!([1, 2])) else { panic!("accepted") };
        assert_eq!(p[0].key, "[set]");
    }
}
