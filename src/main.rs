fn main() -> std::process::ExitCode {
    upsertd::cli::main()
}
