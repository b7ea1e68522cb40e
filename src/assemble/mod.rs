//! Turning captured changes into events and deliveries.

pub mod history;
