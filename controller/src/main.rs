//! `connscale`: the operators' CLI. All work happens in the library; see `connscale --help`.

fn main() -> std::process::ExitCode {
    connscale::cli::main()
}
