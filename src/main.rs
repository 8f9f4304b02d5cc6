//! The `cyberwave-cloud-node` binary: everything lives in the library; this
//! file only hands the command line to it and turns the outcome into an exit
//! code.

fn main() -> std::process::ExitCode {
    cyberwave_cloud_node::run_cli()
}
