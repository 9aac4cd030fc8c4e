//! When the public tier grows or shrinks: a pure policy, fed the tier's load once per
//! statistics period, so tests and the simulator drive it faster than real time.
//!
//! - Load above `high_water` for `periods` periods in a row asks for one more public
//!   reflector (if the pool has one and the tier is below `max_public`).
//! - Load below `low_water` for `periods` periods drains one (if the tier is above
//!   `min_public`, and the others would stay below `high_water` without it, so a shrink
//!   never causes the next grow).
//! - After any action, nothing happens for `cooldown_ms`: the new reflector must take
//!   viewers (or the drained one lose them) before the load means anything again.
//!
//! Which node joins or drains, and the drain itself (no new redirects, KILL once its
//! viewers have left or `drain_max_ms` passed), is the controller's part; so is asking
//! the deployer for a new reflector when the standby pool is empty (`deploy`), and for an
//! intermediate first when every parent's fan-out is full (see `core/scaling.rs`).

/// The scale policy's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleConfig {
    /// Tier load (viewers over capacity, 0..1) above which the tier grows.
    pub high_water: f64,
    /// Tier load below which the tier shrinks.
    pub low_water: f64,
    /// Consecutive periods past a mark before acting.
    pub periods: u32,
    /// Quiet time after an action.
    pub cooldown_ms: u64,
    pub min_public: usize,
    pub max_public: usize,
    /// A draining reflector is killed after this long even if viewers remain.
    pub drain_max_ms: u64,
    /// The controller may start reflectors through its deployer (`Output::Deploy`) when
    /// the standby pool is empty, and stops the ones it started once drained.
    pub deploy: bool,
    /// Fewest and most intermediates the controller keeps or deploys.
    pub min_intermediate: usize,
    pub max_intermediate: usize,
    /// A deployed reflector that has not said HELLO within this long is removed again.
    pub boot_timeout_ms: u64,
    /// After start, wait this long before deploying to reach a minimum: reflectors that
    /// already run (or were adopted) need a moment to reconnect.
    pub startup_grace_ms: u64,
    /// Names of deployed reflectors: `PREFIX-public-N`, `PREFIX-intermediate-N`.
    pub name_prefix: String,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        ScaleConfig {
            high_water: 0.8,
            low_water: 0.3,
            periods: 3,
            cooldown_ms: 30_000,
            min_public: 1,
            max_public: 1000,
            drain_max_ms: 120_000,
            deploy: false,
            min_intermediate: 0,
            max_intermediate: 64,
            boot_timeout_ms: 120_000,
            startup_grace_ms: 10_000,
            name_prefix: "auto".to_string(),
        }
    }
}

/// Why the controller scaled: the label of `divisor_controller_scale_actions_total`
/// (bounded, unlike the log line's detail).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ScaleReason {
    /// Tier load above the high-water mark.
    AboveHighWater,
    /// Tier load below the low-water mark.
    BelowLowWater,
    /// Fewer reflectors of a role than the configured minimum.
    BelowMinimum,
    /// Every parent's fan-out is full: an intermediate comes first.
    FanOutFull,
    /// A new intermediate is up, for the public reflector that needed it.
    UnderNewIntermediate,
    /// A draining reflector's viewers have left.
    Drained,
    /// A draining reflector kept viewers past `drain_max_ms`.
    DrainTimeout,
    /// A deployed reflector never said HELLO.
    BootTimeout,
    /// The deployer could not start it.
    DeployFailed,
    /// A deployed reflector stayed dead.
    Dead,
    /// A deployed intermediate with no children left.
    Idle,
    /// Growth wanted, but the maxima allow nothing.
    AtMaximum,
}

impl ScaleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleReason::AboveHighWater => "above_high_water",
            ScaleReason::BelowLowWater => "below_low_water",
            ScaleReason::BelowMinimum => "below_minimum",
            ScaleReason::FanOutFull => "fan_out_full",
            ScaleReason::UnderNewIntermediate => "under_new_intermediate",
            ScaleReason::Drained => "drained",
            ScaleReason::DrainTimeout => "drain_timeout",
            ScaleReason::BootTimeout => "boot_timeout",
            ScaleReason::DeployFailed => "deploy_failed",
            ScaleReason::Dead => "dead",
            ScaleReason::Idle => "idle",
            ScaleReason::AtMaximum => "at_maximum",
        }
    }
}

/// What the policy asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleAction {
    /// Bring one more public reflector into service.
    Grow,
    /// Drain one public reflector out of service.
    Shrink,
}

impl ScaleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleAction::Grow => "grow",
            ScaleAction::Shrink => "shrink",
        }
    }
}

/// The policy's memory: periods past each mark, and the last action.
#[derive(Clone, Debug)]
pub struct ScalePolicy {
    cfg: ScaleConfig,
    above: u32,
    below: u32,
    last_action_ms: Option<u64>,
}

impl ScalePolicy {
    pub fn new(cfg: ScaleConfig) -> ScalePolicy {
        ScalePolicy {
            cfg,
            above: 0,
            below: 0,
            last_action_ms: None,
        }
    }

    pub fn config(&self) -> &ScaleConfig {
        &self.cfg
    }

    /// One period: `load` of the `active` (serving, not draining) public reflectors, with
    /// `pool` idle ones ready to join.
    pub fn tick(
        &mut self,
        now_ms: u64,
        load: f64,
        active: usize,
        pool: usize,
    ) -> Option<ScaleAction> {
        let load = if load.is_finite() { load.max(0.0) } else { 0.0 };
        if load > self.cfg.high_water {
            self.above += 1;
        } else {
            self.above = 0;
        }
        if load < self.cfg.low_water {
            self.below += 1;
        } else {
            self.below = 0;
        }
        let cooled = self
            .last_action_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= self.cfg.cooldown_ms);
        if !cooled {
            return None;
        }
        let action = if self.above >= self.cfg.periods && active < self.cfg.max_public && pool > 0 {
            Some(ScaleAction::Grow)
        } else if self.below >= self.cfg.periods
            && active > self.cfg.min_public.max(1)
            && load * active as f64 / (active - 1) as f64 <= self.cfg.high_water
        {
            Some(ScaleAction::Shrink)
        } else {
            None
        };
        if action.is_some() {
            self.last_action_ms = Some(now_ms);
            self.above = 0;
            self.below = 0;
        }
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ScalePolicy {
        ScalePolicy::new(ScaleConfig {
            periods: 3,
            cooldown_ms: 10_000,
            min_public: 1,
            max_public: 4,
            ..ScaleConfig::default()
        })
    }

    #[test]
    fn grows_after_n_periods_above_and_then_cools_down() {
        let mut p = policy();
        assert_eq!(p.tick(0, 0.9, 2, 1), None);
        assert_eq!(p.tick(1000, 0.9, 2, 1), None);
        assert_eq!(p.tick(2000, 0.9, 2, 1), Some(ScaleAction::Grow));
        // Still hot, but cooling down.
        for t in 3..12 {
            assert_eq!(p.tick(t * 1000, 0.95, 3, 1), None, "t={t}");
        }
        assert_eq!(p.tick(12_000, 0.95, 3, 1), Some(ScaleAction::Grow));
    }

    #[test]
    fn one_cool_period_resets_the_count() {
        let mut p = policy();
        p.tick(0, 0.9, 2, 1);
        p.tick(1000, 0.9, 2, 1);
        assert_eq!(p.tick(2000, 0.5, 2, 1), None);
        assert_eq!(p.tick(3000, 0.9, 2, 1), None);
    }

    #[test]
    fn no_grow_without_a_pool_or_at_the_maximum() {
        let mut p = policy();
        for t in 0..5 {
            assert_eq!(p.tick(t * 1000, 0.99, 2, 0), None);
        }
        let mut p = policy();
        for t in 0..5 {
            assert_eq!(p.tick(t * 1000, 0.99, 4, 3), None);
        }
    }

    #[test]
    fn shrinks_when_cold_but_never_below_the_minimum_or_into_a_grow() {
        let mut p = policy();
        p.tick(0, 0.1, 3, 0);
        p.tick(1000, 0.1, 3, 0);
        assert_eq!(p.tick(2000, 0.1, 3, 0), Some(ScaleAction::Shrink));
        let mut p = policy();
        for t in 0..5 {
            assert_eq!(p.tick(t * 1000, 0.0, 1, 0), None, "at the minimum");
        }
        // Two reflectors at 0.29 each: without one, the other would be at 0.58, fine; with
        // a high water of 0.5 it would be over it, so no shrink.
        let mut p = ScalePolicy::new(ScaleConfig {
            high_water: 0.5,
            ..policy().cfg
        });
        for t in 0..5 {
            assert_eq!(p.tick(t * 1000, 0.29, 2, 0), None);
        }
    }

    #[test]
    fn does_not_oscillate_under_a_steady_load() {
        let mut p = policy();
        let mut actions = 0;
        for t in 0..100 {
            if p.tick(t * 1000, 0.55, 3, 2).is_some() {
                actions += 1;
            }
        }
        assert_eq!(actions, 0);
    }
}
