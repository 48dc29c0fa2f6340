//! `labnet`: the lab's traffic tool, run inside pods by the tests and the demo.
//!
//! - `labnet serve --port 8080 --reply backend-a [--ready-file F]`: a TCP server that answers
//!   every connection with the reply and a newline, then closes it.
//! - `labnet connect --to 10.96.0.10:80 --count 100 [--timeout-ms 2000]`: opens the
//!   connections one after another, reads each reply, and prints a JSON summary: replies by
//!   text, and failures by error.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use mesh_tests::labnet::Summary;

#[derive(Parser)]
#[command(about = "The lab's traffic tool: a reply server and a connection client")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer every TCP connection with REPLY and a newline.
    Serve {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        reply: String,
        /// Created once the socket listens.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Open COUNT connections to TO one after another; print a JSON summary.
    Connect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Per connection: connect, then read the reply.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Cmd::Serve { port, reply, ready_file } => match serve(port, &reply, ready_file) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("labnet serve: {err}");
                std::process::ExitCode::FAILURE
            }
        },
        Cmd::Connect { to, count, timeout_ms } => {
            let summary = connect(to, count, Duration::from_millis(timeout_ms));
            println!("{}", serde_json::to_string(&summary).expect("a summary serialises"));
            std::process::ExitCode::SUCCESS
        }
    }
}

fn serve(port: u16, reply: &str, ready_file: Option<PathBuf>) -> std::io::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    if let Some(file) = ready_file {
        std::fs::write(file, b"listening\n")?;
    }
    let line = format!("{reply}\n");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.write_all(line.as_bytes());
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    Ok(())
}

fn connect(to: SocketAddr, count: u32, timeout: Duration) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    for _ in 0..count {
        match one(to, timeout) {
            Ok(reply) => {
                summary.ok += 1;
                *summary.replies.entry(reply).or_default() += 1;
            }
            Err(err) => {
                summary.failed += 1;
                *summary.errors.entry(err.to_string()).or_default() += 1;
            }
        }
    }
    summary.elapsed_ms = started.elapsed().as_millis();
    summary
}

fn one(to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&to, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply.trim_end().to_owned())
}
