//! Request parsing: recorded frames of real clients, and mutated bytes.
