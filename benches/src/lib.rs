//! Shared code of sessiond's benchmarks: the load tool's engine and what it
//! reads from the servers it drives.

pub mod load;
pub mod probe;
