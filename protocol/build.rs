//! Generates the agent API's messages and ttrpc (sync) client and server from proto/agent.proto.
//! Pure Rust: ttrpc-codegen parses the .proto itself, so no protoc is needed.

use std::fs;
use std::path::Path;

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    Codegen::new()
        .out_dir(&out_dir)
        .input("proto/agent.proto")
        .include("proto")
        .rust_protobuf()
        .customize(Customize::default())
        .rust_protobuf_customize(ProtobufCustomize::default())
        .run()
        .expect("generating the agent API from proto/agent.proto");
    // The generated files carry inner attributes and module docs, which `include!` rejects;
    // src/lib.rs puts the equivalent attributes on the wrapping modules instead.
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        strip_inner_attributes(&Path::new(&out_dir).join(name));
    }
}

fn strip_inner_attributes(path: &Path) {
    let text = fs::read_to_string(path).expect("reading a generated file");
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| !line.starts_with("#![") && !line.starts_with("//!"))
        .collect();
    fs::write(path, kept.join("\n")).expect("rewriting a generated file");
}
