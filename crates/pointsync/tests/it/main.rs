//! pointsync integration tests: the SQLite store on a real file, then the service end to end
//! through the simulator over loopback HTTP.

mod cli;
mod crash;
mod e2e;
mod harness;
mod store;
