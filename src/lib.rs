//! ailurus: an edge-inference runtime for ViT segmentation with AiluRus token clustering.
//!
//! Frames come from a [`source`], are preprocessed, inferred by a [`model`] whose middle blocks
//! run on tokens merged by a [`reduce`] strategy, postprocessed into masks, and published by
//! [`sink`]s; the [`budget`] controller picks the setting per frame and the [`pipeline`] runs
//! the stages. [`app`] assembles all of it from a [`config`]; the binary's commands call it.
//!
//! Layering (a module imports only from modules below it):
//! - leaves: [`problems`], [`choice`], [`frame`], [`status`], [`eval`], [`pre`]
//! - [`reduce`], then [`engine`] (shared types: setting, stage times, the `Engine` trait)
//! - [`model`], [`source`], [`sink`], [`metrics`], [`budget`]
//! - [`reuse`] (temporal reuse across video frames, over the model's plans and ops)
//! - [`pipeline`], then [`config`] (composes the stage configs), [`service`], [`control`]
//!   (remote `set` requests onto the config), [`app`]

pub mod app;
pub mod budget;
pub mod choice;
pub mod config;
pub mod control;
pub mod engine;
pub mod eval;
pub mod frame;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod pre;
pub mod problems;
pub mod reduce;
pub mod reuse;
pub mod service;
pub mod sink;
pub mod source;
pub mod status;
