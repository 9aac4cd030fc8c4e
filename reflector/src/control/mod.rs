//! The XML control protocol (SOLEIL §3.1).
