//! R-tree provider index and standing radius searches.
