//! Shared code of sessiond's benchmarks: the load tool's engine.

pub mod load;
