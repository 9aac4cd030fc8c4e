//! The tree controller.
