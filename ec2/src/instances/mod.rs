//! Instances (in progress).
