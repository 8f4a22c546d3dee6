//! `vlab`: a virtual hardware lab on KVM.
//!
//! Exit codes (also in the README):
//! - 0–250: the guest's own status, written to the debug-exit port (0xf4);
//!   a guest reset or power-off also ends vlab with 0;
//! - 251: stopped by the user (Ctrl-C/SIGINT, SIGTERM, the escape key);
//! - 252: the guest crashed (triple fault, KVM internal error, ...);
//! - 253: vlab failed while the guest ran;
//! - 254: bad input or setup (flags, files, /dev/kvm): nothing ran;
//! - 255: `--strict`: a protocol monitor found a violation (the VM was
//!   stopped at the first one).

mod bench;
mod cli;
mod disk;
mod disk_stats;
mod doctor;
mod guest;
mod run;
mod terminal;
mod trace;

use std::process::ExitCode;

/// Highest guest status passed through unchanged.
pub const EXIT_GUEST_MAX: u8 = 250;
/// Stopped by the user.
pub const EXIT_INTERRUPTED: u8 = 251;
/// The guest crashed.
pub const EXIT_CRASH: u8 = 252;
/// vlab failed while running.
pub const EXIT_VMM_ERROR: u8 = 253;
/// Bad input: nothing ran.
pub const EXIT_USAGE: u8 = 254;
/// `--strict` and a protocol monitor found a violation.
pub const EXIT_MONITOR: u8 = 255;

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os()) {
        Ok(c) => c,
        Err(cli::ParseOutcome::Info(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(cli::ParseOutcome::Error(msg)) => {
            eprintln!("vlab: {msg}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let code = match cli.command {
        cli::Command::Run(args) => run::run(args),
        cli::Command::Doctor => doctor::doctor(),
        cli::Command::Bench(args) => bench::bench(args),
        cli::Command::Disk(cmd) => disk::disk(cmd),
        cli::Command::Trace(file) => trace::trace(&file),
    };
    ExitCode::from(code)
}
