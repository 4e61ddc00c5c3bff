//! Aggregate: kernel samples become *shadow data points* — per workload and interval,
//! `{timestamp, production input, resource profile}` — plus node totals.
//!
//! The types here are the contract between aggregate and every later stage (predict,
//! allocate, publish); they carry no aya types and serialize with serde (postcard on the
//! wire and on disk, JSON for people).

mod point;

pub use point::*;
