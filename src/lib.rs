//! Unpublished root package: owns tests/ and benches/.
