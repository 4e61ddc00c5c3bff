//! Allocate: predictions become cgroup settings ahead of demand and per request, inside
//! safety rules, each decision explained, dry-run unless enabled, always restored.
//!
//! - [`control`]: the operating state the fleet sets — allocation mode and per-workload
//!   priority tiers — bounded and persisted across restarts.

pub mod control;
