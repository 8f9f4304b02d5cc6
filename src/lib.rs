//! placeholder
pub mod config;
pub mod fsutil;
pub mod identity;
pub mod cli { pub fn main() -> std::process::ExitCode { std::process::ExitCode::SUCCESS } }
