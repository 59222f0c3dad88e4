//! ailurus: an edge-inference runtime for ViT segmentation with AiluRus token clustering.
//!
//! Frames come from a [`source`], are segmented by a [`model`] whose middle blocks run on
//! tokens merged by a [`reduce`] strategy, and the masks go to [`sink`]s. The [`budget`]
//! controller picks the cluster count per frame. See ARCHITECTURE in the README.

pub mod app;
pub mod bench;
pub mod budget;
pub mod calibrate;
pub mod config;
pub mod frame;
pub mod gt;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod plot;
pub mod post;
pub mod pre;
pub mod profile;
pub mod reduce;
pub mod service;
pub mod sink;
pub mod source;
