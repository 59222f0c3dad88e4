//! The threaded pipeline over a fake engine, its metrics, and the budget controller and
//! calibration table it drives (fakes in `support`).

mod budget_calibration;
mod budget_reuse;
mod budget_sim;
mod budget_streams;
mod metrics;
mod stream;
mod support;
