//! `baton-replica-failpoints`: `baton-replica` with the named fault points compiled in
//! (`src/faults.rs`), for the fault-point tests. Built only with `--features failpoints`.

#[path = "../main.rs"]
mod replica_main;

fn main() -> std::process::ExitCode {
    replica_main::main()
}
