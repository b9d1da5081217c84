//! pointsync integration tests: the storage contract (run by each backend: SQLite on a real file),
//! the SQLite backend's own faults, then the service end to end
//! through the simulator over loopback HTTP.

mod cli;
mod console;
mod contract;
mod crash;
mod doctor;
mod e2e;
mod harness;
mod mall;
mod multi;
mod postgres;
mod sqlite;
