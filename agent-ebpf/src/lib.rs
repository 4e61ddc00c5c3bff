#![no_std]
// Lets the agent crate name this package as a build dependency (cargo needs a lib target).
