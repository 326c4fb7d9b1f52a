fn main() -> std::process::ExitCode {
    mahler_cli::main()
}
