//! Topology building and repair (SOLEIL chapter 5).
