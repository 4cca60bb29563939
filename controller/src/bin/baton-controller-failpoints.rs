//! `baton-controller-failpoints`: `baton-controller` with the named fault points compiled in
//! (`runtime::faults`), for the fault-point tests. Built only with `--features failpoints`.

#[path = "../main.rs"]
mod controller_main;

fn main() -> std::process::ExitCode {
    controller_main::main()
}
