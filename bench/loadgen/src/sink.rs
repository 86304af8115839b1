//! pimail-sink: an SMTP server that stores nothing, the benchmark's
//! measure of what this machine's loopback, scheduler and load client
//! allow any server to reach (`bench/smtp.py`, "the physical limits").
//!
//! It answers as a pipelining server must (RFC 2920: replies in order,
//! one write per batch of commands read) and discards the data: no file,
//! no fsync. A thread per connection with blocking sockets: the sink's
//! own cost per message is a few reads and writes, less than any real
//! server's. The port it listens on is printed on stdout ("listening
//! 127.0.0.1:PORT"); it runs until killed.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;

fn session(stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::with_capacity(64 << 10, stream);
    out.write_all(b"220 sink ESMTP\r\n")?;
    let mut replies: Vec<u8> = Vec::with_capacity(256);
    let mut line = Vec::with_capacity(1024);
    let mut in_data = false;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if in_data {
            if line == b".\r\n" {
                in_data = false;
                replies.extend_from_slice(b"250 2.0.0 ok\r\n");
            }
        } else {
            let verb: Vec<u8> = line.iter().take(4).map(u8::to_ascii_uppercase).collect();
            match &verb[..] {
                b"EHLO" => replies.extend_from_slice(
                    b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1073741824\r\n",
                ),
                b"DATA" => {
                    in_data = true;
                    replies.extend_from_slice(b"354 go on\r\n");
                }
                b"QUIT" => {
                    replies.extend_from_slice(b"221 2.0.0 bye\r\n");
                    out.write_all(&replies)?;
                    return Ok(());
                }
                _ => replies.extend_from_slice(b"250 2.0.0 ok\r\n"),
            }
        }
        // Reply once everything the client sent so far is answered.
        if !replies.is_empty() && input.buffer().is_empty() {
            out.write_all(&replies)?;
            replies.clear();
        }
    }
}

fn main() -> ExitCode {
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sink: {e}");
            return ExitCode::from(2);
        }
    };
    match listener.local_addr() {
        Ok(a) => println!("listening {a}"),
        Err(e) => {
            eprintln!("sink: {e}");
            return ExitCode::from(2);
        }
    }
    let _ = io::stdout().flush();
    for conn in listener.incoming() {
        match conn {
            Ok(s) => {
                std::thread::spawn(move || {
                    let _ = session(s);
                });
            }
            Err(e) => eprintln!("sink: accept: {e}"),
        }
    }
    ExitCode::SUCCESS
}
