//! The lab's integration tests, one binary: the simulator, the fault server under floods, and
//! its wire format as a second client (boto3) reads it.

mod boto3_wire;
mod fault_server;
mod quota;
mod simulate;
mod trial;
