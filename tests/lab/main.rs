//! The lab's integration tests, one binary: the simulator and the fault server's wire format
//! as a second client (boto3) reads it.

mod boto3_wire;
mod simulate;
