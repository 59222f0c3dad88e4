//! The latency-budget controller: picks the input size and cluster count M for each frame.

use serde::Deserialize;

use crate::config::Problems;

/// `[budget]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    pub enabled: bool,
    /// Target capture-to-mask latency per frame.
    pub target_ms: f64,
    /// The percentile of latency that must stay under the target.
    pub percentile: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig { enabled: false, target_ms: 2000.0, percentile: 95.0 }
    }
}

impl BudgetConfig {
    pub fn validate(&self, p: &mut Problems) {
        p.check(self.target_ms > 0.0 && self.target_ms.is_finite(), "budget", "target_ms", || {
            format!("{} must be > 0", self.target_ms)
        });
        p.check(self.percentile > 0.0 && self.percentile <= 100.0, "budget", "percentile", || {
            format!("{} is not in (0, 100]", self.percentile)
        });
    }
}
