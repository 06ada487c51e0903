//! The protocol file model.
