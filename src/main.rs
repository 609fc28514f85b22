//! The `authgate` binary: all of it is [`authgate::cli`], in the library.
//!
//! Why so thin: the server's `async fn` bodies are compiled in whichever crate
//! polls them, so a `main` here that awaited the server compiled the whole
//! server a second time after the library (a third of the library's build).

fn main() -> std::process::ExitCode {
    authgate::cli::main()
}
