//! `kubectl understudy`: the plugin binary. Everything is in [`understudy::plugin`].

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = understudy::plugin::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    std::process::ExitCode::from(runtime.block_on(understudy::plugin::run(cli)))
}
