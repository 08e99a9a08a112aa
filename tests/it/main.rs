//! The integration tests: real gRPC servers on 127.0.0.1, real files in temp dirs.

mod agent;
mod agent_observe;
mod ci;
mod cli;
mod deltas;
mod gc;
mod go;
mod goproxy;
mod helpers;
mod hostile;
mod kill;
mod manifest_diffs;
mod metrics;
mod replicate;
mod round_trip;
mod s3;
mod systemd;
mod tls;
mod tokens;
