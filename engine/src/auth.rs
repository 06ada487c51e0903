//! JWT verification (see module docs to come).
