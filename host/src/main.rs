//! The `refold` binary: see [`refold::cli`].

fn main() -> std::process::ExitCode {
    refold::cli::main()
}
